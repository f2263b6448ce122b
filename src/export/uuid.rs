//! Identifiers (UUIDs) of the export formats, derived from the image digest.

use sha2::Digest;

/// 16 bytes derived from the image digest for one purpose (an RFC 9562 version 8 UUID:
/// custom, not random), so identifiers are the same for the same image.
pub fn uuid_bytes(digest: &[u8; 32], purpose: &str) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    h.update(b"fuse export uuid\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(digest);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// [`uuid_bytes`] in the usual 8-4-4-4-12 form.
pub fn uuid_from(digest: &[u8; 32], purpose: &str) -> String {
    let h = crate::digest::hex(&uuid_bytes(digest, purpose));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The image digest as bytes.
pub fn digest_of(raw: &[u8]) -> [u8; 32] {
    crate::digest::sha256(raw)
}
