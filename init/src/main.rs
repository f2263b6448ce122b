//! fuse-init: PID 1 inside a fuse image.

fn main() {}
