//! Small helpers shared by the stages: the file system, test pause points.

pub mod fault;
pub mod fs;
