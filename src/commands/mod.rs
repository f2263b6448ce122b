//! The commands: orchestration only; the work is done by the pipeline's modules.

pub mod build;
pub mod inspect;
pub mod lock;
pub mod run;
