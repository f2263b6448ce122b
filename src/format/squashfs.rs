//! squashfs (to be written).
