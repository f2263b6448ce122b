//! The commands: orchestration only; the work is done by the pipeline's modules.

pub mod build;
pub mod configdisk;
pub mod deploy;
pub mod export;
pub mod images;
pub mod inspect;
pub mod lock;
pub mod promote;
pub mod registry;
pub mod run;
pub mod test;
