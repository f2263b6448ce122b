//! Integration tests of the `fuse` binary: builds from the real archive (the host's mirror),
//! boots under QEMU + OVMF, reproducibility, hostile input. One test binary, modules per area.

mod apps;
mod arm64;
mod aws;
mod boot;
mod build;
mod ci;
mod config;
mod deploy;
mod export;
mod fixture;
mod flask;
mod hostile;
mod inspect;
mod layers;
mod libs;
mod lock;
mod native;
mod oci;
mod oci_source;
mod plan;
mod promote;
mod readers;
mod registry;
mod reliability;
mod runtimes;
mod support;
mod verity;
