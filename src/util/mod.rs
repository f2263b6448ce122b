//! Small helpers shared by the stages: the file system, text for a terminal.

pub mod fs;
pub mod text;
