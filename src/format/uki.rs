//! uki (to be written).
