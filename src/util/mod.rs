//! Small helpers shared by the stages: the file system.

pub mod fs;
