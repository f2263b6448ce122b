//! The zeros some formats append after the image (a VHD's 20 MiB minimum, GCE's whole
//! GiB), found and cut by the image's own GPT.

/// The length of the disk image that starts `disk`, as its own GPT records it: the primary
/// header (LBA 1, 512-byte sectors) names the backup header's LBA, the image's last sector.
/// `None` without a primary header at LBA 1.
pub fn gpt_len(disk: &[u8]) -> Option<u64> {
    let h = disk.get(512..512 + 40)?;
    if &h[..8] != b"EFI PART" || u64::from_le_bytes(h[24..32].try_into().ok()?) != 1 {
        return None;
    }
    let backup = u64::from_le_bytes(h[32..40].try_into().ok()?);
    backup
        .checked_add(1)?
        .checked_mul(512)
        .filter(|&l| l > 1024)
}

/// `disk` without the zeros a format appended after the image (a VHD's 20 MiB minimum, GCE's
/// whole GiB): cut at [`gpt_len`] when everything after it is zero, else left whole.
pub fn cut_padding(mut disk: Vec<u8>) -> Vec<u8> {
    if let Some(len) = gpt_len(&disk).and_then(|l| usize::try_from(l).ok()) {
        if len < disk.len() && disk[len..].iter().all(|&b| b == 0) {
            disk.truncate(len);
        }
    }
    disk
}
