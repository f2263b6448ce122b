//! Small helpers shared by the stages: the file system, text tables, test pause points.

pub mod fault;
pub mod fs;
pub mod table;
