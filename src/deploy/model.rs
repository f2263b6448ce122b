//! The deploy interface: the image being deployed, a server's spec, the [`Target`] and
//! [`Switch`] traits every target implements, and the gate failure they report.

use crate::disk::ImageMeta;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub use crate::ledger::{Server, Upload};

/// The image being deployed, read and verified once.
pub struct Image {
    pub path: PathBuf,
    /// `sha256:` of the raw image.
    pub digest: String,
    pub meta: ImageMeta,
}

impl Image {
    /// Reads a raw image (a file, or a reference to the local store), its digest and its
    /// image.json.
    pub fn open(reference: &str) -> Result<Image> {
        let path = crate::image_store::resolve_image_ref(reference)?;
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read image {}", path.display()))?;
        let meta = crate::disk::read_meta(&bytes)
            .with_context(|| format!("{} is not a fuse image (raw)", path.display()))?;
        let digest = format!("sha256:{}", crate::digest::sha256_hex(&bytes));
        Ok(Image { path, digest, meta })
    }

    /// The first 12 hex digits of the digest.
    pub fn short(&self) -> &str {
        short(&self.digest)
    }
}

/// The first 12 hex digits of a `sha256:` digest.
pub fn short(digest: &str) -> &str {
    let h = digest.strip_prefix("sha256:").unwrap_or(digest);
    &h[..h.len().min(12)]
}

/// What a target needs to start one server.
pub struct ServerSpec<'a> {
    pub env: &'a str,
    /// Unique; carries the environment, the image name and a digest prefix.
    pub name: String,
    /// The environment's KEY=VALUE env file (fw_cfg opt/fuse/env, user data...).
    pub config: Option<&'a [u8]>,
}

/// Where servers run.
pub trait Target {
    /// Reachable and usable, checked before anything is started (clear error naming where).
    fn check(&mut self) -> Result<()>;
    /// Put the image on the target once per digest (reuse and verify when present);
    /// `parent`: the image the environment runs now, when there is one (AWS: parent snapshot).
    fn put_image(&mut self, img: &Image, parent: Option<&Image>) -> Result<Upload>;
    fn start(&mut self, img: &Image, spec: &ServerSpec) -> Result<Server>;
    /// The console text so far (identity gate, and the last lines in failure reports).
    fn console(&mut self, s: &Server) -> Result<String>;
    /// Where the app answers, once known (fills Server.address).
    fn address(&mut self, s: &Server) -> Result<Option<String>>;
    /// Stop and delete the server; idempotent (gone already is fine).
    fn stop(&mut self, s: &Server) -> Result<()>;
    /// Every server this target runs for `env` (found by name/tag), to reconcile leftovers.
    fn servers(&mut self, env: &str) -> Result<Vec<Server>>;
    /// Whether the switch judges health (AWS target group: true): then the flow adds the new
    /// servers to the switch first and waits for `Switch::healthy`; else (libvirt+HAProxy)
    /// the flow polls the image's [health] over HTTP before adding them.
    fn health_by_switch(&self) -> bool {
        false
    }
}

/// What sends an environment's traffic to its servers.
pub trait Switch {
    fn check(&mut self) -> Result<()>;
    fn add(&mut self, s: &Server) -> Result<()>;
    fn healthy(&mut self, s: &Server) -> Result<bool>;
    fn drain(&mut self, s: &Server) -> Result<()>;
    /// Sessions still open on a draining server (0 when the switch cannot tell).
    fn sessions(&mut self, s: &Server) -> Result<u64>;
    fn remove(&mut self, s: &Server) -> Result<()>;
}

/// A deployment refused by a gate: which server, which gate, why, and its last console lines.
#[derive(Debug)]
pub struct GateFailed {
    pub server: String,
    pub gate: String,
    pub detail: String,
    pub console_tail: String,
}

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {} failed the {} gate: {}; the old servers keep serving",
            self.server, self.gate, self.detail
        )?;
        if !self.console_tail.is_empty() {
            write!(
                f,
                "\nlast console lines of {}:\n{}",
                self.server, self.console_tail
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for GateFailed {}

/// The last `n` lines of console text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
