//! `[runtime] modules`: what the manifest asks of the trimmed JRE beyond the analysis.

use std::collections::BTreeSet;

/// `[runtime] modules`: modules added to those the analysis finds, or the whole JRE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modules {
    Extra(Vec<String>),
    All,
}

impl Default for Modules {
    fn default() -> Self {
        Modules::Extra(Vec::new())
    }
}

impl Modules {
    /// As recorded in a layer's inputs: `all` or the sorted list.
    pub fn key(&self) -> String {
        match self {
            Modules::All => "all".into(),
            Modules::Extra(v) => {
                let s: BTreeSet<&String> = v.iter().collect();
                s.into_iter().cloned().collect::<Vec<_>>().join(",")
            }
        }
    }
}
