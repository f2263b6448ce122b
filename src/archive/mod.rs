//! The Debian archive, read without apt: signed `InRelease` files, `Packages`
//! indexes, `.deb` files and dpkg version order.
//!
//! Every function here is pure (bytes in, values out): fetching and caching
//! are the caller's job. The trust chain is apt's: `InRelease` verified
//! against the archive keyring ([`release::verify_inrelease`]) lists the
//! SHA-256 of each index; an index lists the SHA-256 of each `.deb`
//! ([`check_size_sha256`] checks both steps).

pub mod deb;
pub mod packages;
pub mod release;
pub mod version;

pub use deb::{read_deb, Deb};
pub use packages::{parse_deb822, parse_packages, parse_relations, Package, Relation};
pub use release::{parse_release, verify_inrelease, FileEntry, Keyring, Release, VerifyOptions};
pub use version::compare_versions;

use anyhow::{bail, Result};

use crate::digest::sha256_hex;

/// The error for a checksum that does not match: names what was checked,
/// the expected and the actual digest.
pub fn hash_mismatch(what: &str, expected: &str, got: &str) -> anyhow::Error {
    anyhow::anyhow!("sha256 mismatch for {what}: expected {expected}, got {got}")
}

/// Check that `data` has the SHA-256 `expected` (hex, any case).
pub fn check_sha256(what: &str, data: &[u8], expected: &str) -> Result<()> {
    let got = sha256_hex(data);
    if !got.eq_ignore_ascii_case(expected) {
        return Err(hash_mismatch(what, &expected.to_ascii_lowercase(), &got));
    }
    Ok(())
}

/// Check size then SHA-256 of a download (an index against its Release
/// entry, a .deb against its Packages entry).
pub fn check_size_sha256(what: &str, data: &[u8], size: u64, sha256: &str) -> Result<()> {
    if data.len() as u64 != size {
        bail!(
            "size mismatch for {what}: expected {size} bytes, got {} (truncated or wrong download?)",
            data.len()
        );
    }
    check_sha256(what, data, sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_mismatch_messages() {
        // SHA-256 of "abc" (FIPS 180-2 example).
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        check_sha256("x", b"abc", &abc.to_uppercase()).unwrap();
        check_size_sha256("x", b"abc", 3, abc).unwrap();
        let e = check_sha256("pool/a.deb", b"abd", abc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pool/a.deb") && e.contains(&format!("expected {abc}, got ")),
            "{e}"
        );
        let e = check_size_sha256("idx", b"ab", 3, abc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 3 bytes, got 2"), "{e}");
    }
}
