//! fat (to be written).
