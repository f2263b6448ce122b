//! A bounded worker pool for work that comes one piece per input item (a layer, a file):
//! at most a few threads however many items an input lists, results in input order.
//!
//! Spawning a thread per item lets a hostile input (an image.json listing 40,000 layers)
//! exhaust the process's threads; here the number of threads is fixed up front, a thread
//! that cannot be spawned is simply not used (the calling thread works too), and a panic
//! in one item is that item's error, not the process's.

use anyhow::{bail, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Default number of workers: the machine's parallelism, at most 8.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// Workers for a build (the threads that read the app's files and packages, write layers and
/// compress the initramfs' core at once): `FUSE_JOBS` when set (a whole number from 1 to 64; anything
/// else is an error), else [`default_workers`].
pub fn build_workers() -> Result<usize> {
    match std::env::var("FUSE_JOBS") {
        Err(std::env::VarError::NotPresent) => Ok(default_workers()),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => bail!("FUSE_JOBS={v:?}: expected a whole number of workers from 1 to 64"),
        },
        Err(e) => bail!("FUSE_JOBS: {e}"),
    }
}

thread_local! {
    /// Set while this thread works on a [`map`]'s items.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f` over every item on at most `workers` threads (the caller's included); `Err` holds the
/// panic message of an item whose `f` panicked.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Result<R, String>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R, String>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { break };
        let r = catch_unwind(AssertUnwindSafe(|| f(item))).map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into())
        });
        if let Ok(mut v) = results.lock() {
            v[i] = Some(r);
        }
    };
    // A map inside another map's item runs on its caller's thread: the outer map's
    // workers are the whole budget (FUSE_JOBS is the peak number of threads of a build).
    let extra = if IN_WORKER.get() {
        0
    } else {
        workers.max(1).min(items.len()).saturating_sub(1)
    };
    let worker = || {
        let was = IN_WORKER.replace(true);
        work();
        IN_WORKER.set(was);
    };
    std::thread::scope(|s| {
        for _ in 0..extra {
            // A thread that cannot be made (EAGAIN) leaves its share to the others.
            if std::thread::Builder::new().spawn_scoped(s, worker).is_err() {
                break;
            }
        }
        worker();
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not run".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_with_at_most_n_threads_and_panics_contained() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u32> = (0..2000).collect();
        let out = map(&items, 3, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            if i == 1234 {
                panic!("item {i} is bad");
            }
            i * 2
        });
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(out.len(), 2000);
        for (i, r) in out.iter().enumerate() {
            if i == 1234 {
                assert_eq!(r.as_ref().unwrap_err(), "item 1234 is bad");
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u32 * 2);
            }
        }
        assert!(map(&[] as &[u8], 4, |_| 1).is_empty());
        assert_eq!(map(&[5], 0, |x| x + 1), [Ok(6)]);
    }

    #[test]
    fn a_map_inside_a_map_adds_no_threads() {
        let threads = Mutex::new(std::collections::HashSet::new());
        let outer: Vec<u32> = (0..8).collect();
        let out = map(&outer, 2, |&i| {
            let inner: Vec<u32> = (0..50).collect();
            let sums = map(&inner, 4, |&j| {
                threads.lock().unwrap().insert(std::thread::current().id());
                std::thread::yield_now();
                i + j
            });
            sums.into_iter().map(|r| r.unwrap()).sum::<u32>()
        });
        assert_eq!(out.len(), 8);
        assert!(threads.lock().unwrap().len() <= 2);
        // Outside any map, a map uses its workers again.
        assert!(!IN_WORKER.get());
    }
}
