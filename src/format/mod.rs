//! Writers (and readers) of on-disk formats: trees and bytes in, bytes out. Pure: no I/O.

pub mod authenticode;
pub mod cpio;
pub mod elf;
pub mod fat;
pub mod gpt;
pub mod jar;
pub mod squashfs;
pub mod uki;
pub mod verity;
pub mod zip;
