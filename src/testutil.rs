//! Test helpers for cross-checks that need an outside tool (sfdisk, mtools, unsquashfs...):
//! a test that cannot run its check FAILS when env `CI` is set (CI installs every tool, see
//! scripts/setup.sh) and otherwise reports the skip where libtest shows it.
//!
//! Shared by the unit tests (`crate::testutil`) and the integration tests (tests/it/support.rs
//! includes this file). Usage:
//!
//! ```ignore
//! if !require_tool("sfdisk") {
//!     return; // skipped (reported on the terminal); under CI this panicked instead
//! }
//! ```

use std::io::Write;
use std::path::Path;

/// Whether `tool` is an executable file on PATH (or an existing absolute path).
pub fn have_tool(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// True when `tool` is installed. Otherwise: panics when env `CI` is set, else reports a
/// visible skip and returns false (the caller returns or leaves the check out).
pub fn require_tool(tool: &str) -> bool {
    require(have_tool(tool), &format!("{tool} is not installed"))
}

/// The general form: `ok` says whether the check can run; `missing` says what is missing.
/// Panics under CI when `ok` is false; otherwise reports a visible skip.
pub fn require(ok: bool, missing: &str) -> bool {
    require_in(std::env::var_os("CI").is_some(), ok, missing)
}

fn require_in(ci: bool, ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    if ci {
        panic!(
            "CI is set and this test cannot run its check: {missing} \
             (scripts/setup.sh installs every tool the tests use)"
        );
    }
    skip(missing);
    false
}

/// Report a skipped check on the real stderr. libtest captures `eprintln!` of passing tests
/// and would hide the line; a direct write to the stderr handle is shown. Use this directly
/// only for checks CI cannot be expected to run either (e.g. parts that need root).
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_that_exists_and_not_one_that_does_not() {
        assert!(have_tool("sh"));
        assert!(have_tool("/bin/sh"));
        assert!(!have_tool("no-such-tool-fuse-test"));
        assert!(require(true, "nothing"));
    }

    #[test]
    #[should_panic(expected = "CI is set")]
    fn a_missing_tool_fails_under_ci() {
        require_in(
            true,
            have_tool("no-such-tool-fuse-test"),
            "no-such-tool-fuse-test",
        );
    }
}
