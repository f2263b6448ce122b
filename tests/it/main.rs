//! Integration tests of the `fuse` binary: builds from the real archive (the host's mirror),
//! boots under QEMU + OVMF, reproducibility, hostile input. One test binary, modules per area.

mod boot;
mod build;
mod fixture;
mod hostile;
mod libs;
mod lock;
mod runtimes;
mod support;
