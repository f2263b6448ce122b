//! Small helpers shared by the stages: the file system, text tables, text for a terminal,
//! test pause points.

pub mod fault;
pub mod fs;
pub mod table;
pub mod text;
