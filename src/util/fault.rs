//! Named points where a test can stop a build or a deployment to kill it there
//! (`FUSE_TEST_PAUSE=<point>`): the program creates the file named by `FUSE_TEST_PAUSE_FILE`
//! and sleeps, so a crash test reaches "while building units", "while writing the image" or
//! `deploy:switched` on purpose, not by timing. Without the variable (every real run) a
//! point costs one environment lookup.

use std::time::Duration;

/// Stop here when `FUSE_TEST_PAUSE` names `point`: announce it (the file) and sleep
/// (10 minutes, then go on: a forgotten test never hangs for ever).
pub fn pause(point: &str) {
    let Some(want) = std::env::var_os("FUSE_TEST_PAUSE") else {
        return;
    };
    if want != point {
        return;
    }
    tracing::warn!("FUSE_TEST_PAUSE: pausing at {point}");
    if let Some(f) = std::env::var_os("FUSE_TEST_PAUSE_FILE") {
        let _ = std::fs::write(f, point);
    }
    std::thread::sleep(Duration::from_secs(600));
}
