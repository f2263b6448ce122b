//! Small helpers shared by the stages: the file system, text tables.

pub mod fs;
pub mod table;
