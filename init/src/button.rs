//! The ACPI power button, as the kernel reports it: an input device (driver `button`) whose
//! `/dev/input/event*` node (driver `evdev`) delivers `EV_KEY`/`KEY_POWER` when a hypervisor
//! or cloud asks the machine to stop (QEMU `system_powerdown`, a cloud's "stop instance").

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Where evdev's device nodes appear (devtmpfs).
pub const INPUT_DIR: &str = "/dev/input";

/// `EV_KEY` from linux/input-event-codes.h.
pub const EV_KEY: u16 = 0x01;
/// `KEY_POWER` from linux/input-event-codes.h.
pub const KEY_POWER: u16 = 116;
/// `KEY_MAX`: the key bitmap holds KEY_MAX + 1 bits.
const KEY_MAX: usize = 0x2ff;

/// `struct input_event` on 64-bit Linux: a `struct timeval` (2 x 8 bytes), then
/// `__u16 type`, `__u16 code`, `__s32 value`.
pub const EVENT_SIZE: usize = 24;

/// `_IOC(_IOC_READ, 'E', nr, len)`, the evdev ioctls that read into a buffer.
const fn eviocg(nr: u64, len: usize) -> u64 {
    (2u64 << 30) | ((len as u64) << 16) | ((b'E' as u64) << 8) | nr
}

/// `EVIOCGNAME(len)`: the device's name.
fn eviocgname(len: usize) -> u64 {
    eviocg(0x06, len)
}

/// `EVIOCGBIT(ev, len)`: the codes of event type `ev` the device can send.
fn eviocgbit(ev: u16, len: usize) -> u64 {
    eviocg(0x20 + u64::from(ev), len)
}

/// Is bit `n` set in a little-endian bitmap of bytes?
pub fn bit_set(map: &[u8], n: usize) -> bool {
    map.get(n / 8).is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// Does a buffer of `struct input_event`s hold a press (value 1) of the power key?
/// Incomplete trailing bytes are ignored.
pub fn power_pressed(events: &[u8]) -> bool {
    events.chunks_exact(EVENT_SIZE).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// An open input device that can send KEY_POWER.
pub struct Button {
    pub file: std::fs::File,
    pub path: String,
    pub name: String,
}

impl Button {
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads what is pending (non-blocking); true when it held a power-key press.
    /// An error (device gone) is returned so the caller can drop the device.
    pub fn read_pressed(&self) -> io::Result<bool> {
        let mut buf = [0u8; EVENT_SIZE * 32];
        let mut pressed = false;
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(pressed),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n == 0 {
                return Ok(pressed);
            }
            pressed |= power_pressed(buf.get(..n as usize).unwrap_or(&[]));
        }
    }
}

/// Opens `path` and keeps it when the device can send KEY_POWER.
fn open_if_power(path: &str) -> Option<Button> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut keys = [0u8; KEY_MAX / 8 + 1];
    // SAFETY: the ioctl writes at most keys.len() bytes into keys.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            eviocgbit(EV_KEY, keys.len()) as _,
            keys.as_mut_ptr(),
        )
    };
    if r < 0 || !bit_set(&keys, KEY_POWER as usize) {
        return None;
    }
    let mut name = [0u8; 128];
    // SAFETY: the ioctl writes at most name.len() bytes into name.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            eviocgname(name.len()) as _,
            name.as_mut_ptr(),
        )
    };
    let name = if r > 0 {
        let s = &name[..(r as usize).min(name.len())];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end]).into_owned()
    } else {
        "unnamed".into()
    };
    Some(Button {
        file,
        path: path.to_string(),
        name,
    })
}

/// Every input device under [`INPUT_DIR`] that can send KEY_POWER, sorted by path.
pub fn find() -> Vec<Button> {
    let Ok(dir) = std::fs::read_dir(INPUT_DIR) else {
        return Vec::new();
    };
    let mut paths: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("event"))
        .map(|n| format!("{INPUT_DIR}/{n}"))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| open_if_power(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values of EVIOCGNAME(256) and EVIOCGBIT(EV_KEY, 96) as compiled from
        // linux/input.h on x86-64.
        assert_eq!(eviocgname(256), 0x8100_4506);
        assert_eq!(eviocgbit(EV_KEY, 96), 0x8060_4521);
    }

    #[test]
    fn a_power_press_is_found_among_other_events() {
        let mut buf = event(0, 0, 0); // EV_SYN
        assert!(!power_pressed(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 0)); // release
        assert!(!power_pressed(&buf));
        buf.extend(event(EV_KEY, 30, 1)); // KEY_A
        assert!(!power_pressed(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(power_pressed(&buf));
        assert!(!power_pressed(&buf[..buf.len() - 1][EVENT_SIZE * 3..]));
    }

    #[test]
    fn bitmaps() {
        let mut keys = [0u8; KEY_MAX / 8 + 1];
        assert_eq!(keys.len(), 96);
        keys[KEY_POWER as usize / 8] |= 1 << (KEY_POWER % 8);
        assert!(bit_set(&keys, 116));
        assert!(!bit_set(&keys, 115));
        assert!(!bit_set(&keys, 10_000));
    }
}
