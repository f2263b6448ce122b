//! A small mutation fuzzer that runs on stable Rust inside `cargo test`: seed inputs are
//! mutated (bit flips, interesting integers, cut, spliced, duplicated ranges) and fed to a
//! reader of untrusted bytes. A case fails the test when the reader panics, runs past a
//! time limit (each case runs on a worker thread with a deadline), or allocates past a
//! budget (a counting global allocator, per worker thread, in the test binary).
//!
//! Bounded by default (CI): FUSE_FUZZ_CASES cases per target (default 400) and at most
//! FUSE_FUZZ_SECONDS seconds per target (default 2). FUSE_FUZZ_SEED changes the
//! mutation sequence; FUSE_FUZZ_MEM_MB the allocation budget (default 256). A failing
//! input is written to `<target dir>/tmp/fuzz-failures/<target>-<case>.bin`.
//!
//! Used by tests/fuzz.rs and by the init crate's fuzz tests (included with #[path]).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Counts the live bytes and the peak of the threads that asked for it.
pub struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|l| {
                let v = l.get() + delta;
                l.set(v);
                let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
            });
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the bookkeeping
// touches only thread-locals without destructors and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new as isize - l.size() as isize);
        System.realloc(p, l, new)
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A xorshift64* generator: deterministic per target and seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x10,
    0x20,
    0x40,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    b":",
    b" ",
    b"=",
    b"\"",
    b"/",
    b"../",
    b"\0",
    "\u{e9}".as_bytes(),
    "\u{20ac}".as_bytes(),
    "\u{10ffff}".as_bytes(),
    b"{",
    b"}",
    b"[",
    b"]",
    b"-1",
    b"99999999999999999999",
    b"18446744073709551615",
];

/// One mutation of `data` (with `seeds` to splice from).
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 | 3 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                (v << (64 - 8 * width as u32).min(63)).to_be_bytes()
            };
            let i = rng.below(len);
            let n = width.min(len - i);
            data[i..i + n].copy_from_slice(&bytes[..n]);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            data.drain(i..i + n);
        }
        5 => {
            let i = rng.below(len + 1);
            let t = TOKENS[rng.below(TOKENS.len())];
            data.splice(i..i, t.iter().copied());
        }
        6 if len > 0 => {
            // Duplicate a range elsewhere (repeated structures, long lines).
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(1024));
            let chunk = data[i..i + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        7 if len > 0 => {
            data.truncate(rng.below(len));
        }
        8 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(4096));
                let at = rng.below(len + 1);
                let end = (at + n).min(len);
                data.splice(at..end, other[i..i + n].iter().copied());
            }
        }
        9 if len > 0 => {
            let i = rng.below(len);
            let d = rng.below(33) as u8;
            data[i] = if rng.below(2) == 0 {
                data[i].wrapping_add(d)
            } else {
                data[i].wrapping_sub(d)
            };
        }
        _ => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(i..i, bytes);
        }
    }
}

fn failures_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("fuzz-failures")
}

fn save(name: &str, case: usize, input: &[u8]) -> PathBuf {
    let dir = failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{name}-{case}.bin"));
    let _ = std::fs::write(&p, input);
    p
}

/// What one target's run did.
#[derive(Debug)]
pub struct Stats {
    pub cases: usize,
    pub seeds: usize,
    pub elapsed: Duration,
    pub peak_bytes: isize,
}

enum Outcome {
    Ok(isize),
    Panicked(String, isize),
}

/// Fuzz `target` from `seeds`: each seed as is, then mutated cases until the case count or
/// the time allowance is spent. Panics (failing the test) on the first bad case, naming it.
pub fn run(name: &str, seeds: Vec<Vec<u8>>, target: fn(&[u8])) -> Stats {
    let cases = env_num("FUSE_FUZZ_CASES", 400) as usize;
    let seconds = env_num("FUSE_FUZZ_SECONDS", 2);
    let budget = (env_num("FUSE_FUZZ_MEM_MB", 256) << 20) as isize;
    let case_timeout = Duration::from_secs(env_num("FUSE_FUZZ_CASE_TIMEOUT", 20));
    let seed = env_num("FUSE_FUZZ_SEED", 0x5eed);
    assert!(!seeds.is_empty(), "fuzz target {name} has no seed input");
    let mut rng = Rng::new(
        seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    );

    let (to_worker, inputs) = mpsc::channel::<Vec<u8>>();
    let (to_main, outcomes) = mpsc::channel::<Outcome>();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(64 << 20)
        .spawn(move || {
            for input in inputs {
                TRACK.with(|t| t.set(true));
                LIVE.with(|l| l.set(0));
                PEAK.with(|p| p.set(0));
                let r = catch_unwind(AssertUnwindSafe(|| target(&input)));
                TRACK.with(|t| t.set(false));
                let peak = PEAK.with(|p| p.get());
                let out = match r {
                    Ok(()) => Outcome::Ok(peak),
                    Err(p) => Outcome::Panicked(
                        p.downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into()),
                        peak,
                    ),
                };
                drop(input);
                if to_main.send(out).is_err() {
                    return;
                }
            }
        })
        .expect("cannot start the fuzz worker");

    let start = Instant::now();
    let mut peak_all = 0;
    let mut n = 0;
    let deadline = Duration::from_secs(seconds);
    while n < seeds.len() + cases && (n < seeds.len() || start.elapsed() < deadline) {
        let input = if n < seeds.len() {
            seeds[n].clone()
        } else {
            let mut d = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                mutate_once(&mut rng, &mut d, &seeds);
            }
            d
        };
        to_worker
            .send(input.clone())
            .expect("the fuzz worker stopped");
        match outcomes.recv_timeout(case_timeout) {
            Ok(Outcome::Ok(peak)) => {
                peak_all = peak_all.max(peak);
                if peak > budget {
                    let p = save(name, n, &input);
                    panic!(
                        "fuzz {name}: case {n} allocated {} MiB at its peak (budget {} MiB); input saved to {}",
                        peak >> 20,
                        budget >> 20,
                        p.display()
                    );
                }
            }
            Ok(Outcome::Panicked(msg, _)) => {
                let p = save(name, n, &input);
                panic!(
                    "fuzz {name}: case {n} panicked: {msg}; input ({} bytes) saved to {}",
                    input.len(),
                    p.display()
                );
            }
            Err(_) => {
                let p = save(name, n, &input);
                panic!(
                    "fuzz {name}: case {n} ran longer than {case_timeout:?}; input ({} bytes) saved to {}",
                    input.len(),
                    p.display()
                );
            }
        }
        n += 1;
    }
    drop(to_worker);
    let _ = worker.join();
    let stats = Stats {
        cases: n,
        seeds: seeds.len(),
        elapsed: start.elapsed(),
        peak_bytes: peak_all,
    };
    // On the real stderr: libtest would hide it for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {name}: {} cases ({} seeds) in {:.1} s, peak allocation {:.1} MiB",
        stats.cases,
        stats.seeds,
        stats.elapsed.as_secs_f64(),
        stats.peak_bytes as f64 / 1048576.0
    );
    stats
}

/// Bytes as text the way a text reader would get them (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
