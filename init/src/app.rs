//! The app: its environment, starting it (chroot, drop privileges, exec), supervising it
//! (signal forwarding, zombie reaping) until it exits.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{valid_env_key, AppConfig};
use crate::console;

/// PATH the app starts with.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The signals the app may be stopped with (boot.json `app.stop_signal`, a container's
/// StopSignal), by name; the builder's `oci::container::STOP_SIGNALS` has the same names.
pub const STOP_SIGNALS: [(&str, libc::c_int); 11] = [
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGABRT", libc::SIGABRT),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGPWR", libc::SIGPWR),
];

/// The number of a signal of [`STOP_SIGNALS`] named exactly so.
pub fn stop_signal_number(name: &str) -> Option<libc::c_int> {
    STOP_SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// The signal that stops `app`: its `stop_signal` (validated with the boot plan), else
/// SIGTERM.
pub fn stop_signal_of(app: &AppConfig) -> libc::c_int {
    app.stop_signal
        .as_deref()
        .and_then(stop_signal_number)
        .unwrap_or(libc::SIGTERM)
}

/// Signals PID 1 passes on to the app.
pub const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// An env file, parsed: the variables, and the (1-based) numbers of lines that were not
/// `KEY=VALUE` (reported by number only: the text may hold secrets).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvFile {
    pub vars: BTreeMap<String, String>,
    pub bad_lines: Vec<usize>,
}

/// Parses `KEY=VALUE` lines. Blank lines and lines starting with `#` are ignored; a VALUE
/// wrapped in matching single or double quotes loses them; CRLF line ends are accepted.
/// A later line for the same KEY wins.
pub fn parse_env_file(data: &[u8]) -> EnvFile {
    let mut out = EnvFile::default();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            out.bad_lines.push(n);
            continue;
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            out.bad_lines.push(n);
            continue;
        };
        let key = key.trim_end();
        if !valid_env_key(key) || value.contains('\0') {
            out.bad_lines.push(n);
            continue;
        }
        out.vars.insert(key.to_string(), unquote(value).to_string());
    }
    out
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v.get(1..v.len() - 1).unwrap_or(v);
        }
    }
    v
}

/// The app's environment: PATH and HOME, then boot.json's `env`, then the env file's
/// overrides (later sources win).
pub fn build_env(
    workdir: &str,
    defaults: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("HOME".to_string(), workdir.to_string());
    for (k, v) in defaults.iter().chain(overrides) {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// The app's argv with the words of `env_args`'s variable (if set) inserted at its index.
pub fn with_env_args(app: &AppConfig, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = app.argv.clone();
    if let Some(e) = &app.env_args {
        if let Some(v) = env.get(&e.var) {
            let at = e.at.min(argv.len());
            let words: Vec<String> = v.split_whitespace().map(str::to_string).collect();
            if !words.is_empty() {
                crate::log!("{}: {} words added to the command line", e.var, words.len());
            }
            argv.splice(at..at, words);
        }
    }
    argv
}

/// Everything the child needs, built before fork so the child does no parsing.
pub struct Prepared {
    root: CString,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    argv0: String,
}

impl Prepared {
    /// Converts the app config and environment to C strings for `execve`.
    pub fn new(root: &str, app: &AppConfig, env: &BTreeMap<String, String>) -> Result<Prepared> {
        let cs = |s: &str| CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"));
        let argv0 = app
            .argv
            .first()
            .ok_or_else(|| anyhow!("app.argv is empty"))?
            .clone();
        let mut envp = Vec::new();
        for (k, v) in env {
            envp.push(
                CString::new(format!("{k}={v}"))
                    .map_err(|_| anyhow!("environment variable {k} contains a NUL byte"))?,
            );
        }
        let argv = with_env_args(app, env);
        Ok(Prepared {
            root: cs(root)?,
            path: cs(&argv0)?,
            argv: argv.iter().map(|a| cs(a)).collect::<Result<_>>()?,
            envp,
            workdir: cs(&app.workdir)?,
            uid: app.uid,
            gid: app.gid,
            argv0,
        })
    }
}

/// Blocks the forwarded signals and SIGCHLD in PID 1 (they are read from a signalfd).
/// Called first thing, so nothing is lost before supervision starts.
pub fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("sigprocmask: {}", io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Child side: prints `fuse-init: cannot start <argv0>: <what>: <error>` and exits 127.
fn child_fail(argv0: &str, what: &str) -> ! {
    let e = io::Error::last_os_error();
    console::line(&format!("cannot start {argv0}: {what}: {e}"));
    // SAFETY: _exit never returns and runs no atexit handlers.
    unsafe { libc::_exit(127) }
}

/// In the forked child: new session, chroot, chdir, drop to uid/gid, default signal
/// state, exec. Never returns.
fn child(p: &Prepared) -> ! {
    let a0 = p.argv0.as_str();
    // SAFETY: all calls below take valid pointers prepared before fork; the child process
    // is single-threaded and touches no lock another parent thread could have held.
    unsafe {
        if libc::setsid() < 0 {
            child_fail(a0, "setsid");
        }
        if libc::chroot(p.root.as_ptr()) != 0 {
            child_fail(a0, "chroot");
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            child_fail(a0, "chdir /");
        }
        if libc::chdir(p.workdir.as_ptr()) != 0 {
            child_fail(a0, &format!("chdir {}", p.workdir.to_string_lossy()));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            child_fail(a0, "setgroups");
        }
        if libc::setgid(p.gid) != 0 {
            child_fail(a0, &format!("setgid {}", p.gid));
        }
        if libc::setuid(p.uid) != 0 {
            child_fail(a0, &format!("setuid {}", p.uid));
        }
        if libc::getuid() != p.uid
            || libc::geteuid() != p.uid
            || libc::getgid() != p.gid
            || libc::getegid() != p.gid
        {
            console::line(&format!(
                "cannot start {a0}: still uid {} gid {} after dropping privileges",
                libc::geteuid(),
                libc::getegid()
            ));
            libc::_exit(127);
        }
        if p.uid != 0 && libc::setuid(0) == 0 {
            console::line(&format!(
                "cannot start {a0}: could regain root after setuid"
            ));
            libc::_exit(127);
        }
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            child_fail(a0, "sigprocmask");
        }
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        child_fail(a0, "execve");
    }
}

/// Forks and starts the app; returns its pid.
pub fn spawn(p: &Prepared) -> Result<libc::pid_t> {
    // SAFETY: the child runs only `child`: system calls on pointers prepared before the
    // fork and Vec allocations (glibc's fork keeps malloc usable in the child even when
    // the device poller thread is still running in the parent).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        child(p);
    }
    Ok(pid)
}

/// How the app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Decodes a `waitpid` status.
    pub fn from_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
        }
    }
}

/// A short name for the common signals.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGPWR => "SIGPWR",
        _ => "other",
    }
}

/// Reaps every exited child; returns the app's status if it was among them.
fn reap(app: libc::pid_t) -> Option<Exit> {
    let mut app_exit = None;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return app_exit;
        }
        if pid == app {
            app_exit = Some(Exit::from_status(status));
        }
    }
}

/// How long init keeps looking for a power button that has not appeared yet.
const BUTTON_SEARCH: Duration = Duration::from_secs(10);

/// The graceful stop in progress: when the stop signal went out, and whether SIGKILL followed.
struct Stopping {
    since: Instant,
    killed: bool,
}

/// Runs as PID 1 until the app exits: forwards [`FORWARDED`] signals to it, reaps every
/// zombie, and on the ACPI power button stops it: `stop_signal` (SIGTERM unless the boot
/// plan names another), then SIGKILL (to its whole process group) when it is still running
/// `stop_timeout` later. `mask` is the set blocked by [`block_signals`].
pub fn supervise(
    app: libc::pid_t,
    mask: &libc::sigset_t,
    stop_signal: libc::c_int,
    stop_timeout: Duration,
) -> Result<Exit> {
    let stop_name = signal_name(stop_signal);
    // SAFETY: mask is a valid sigset; -1 asks for a new signalfd.
    let fd = unsafe { libc::signalfd(-1, mask, libc::SFD_CLOEXEC) };
    if fd < 0 {
        bail!("signalfd: {}", io::Error::last_os_error());
    }
    if let Some(exit) = reap(app) {
        return Ok(exit);
    }
    let started = Instant::now();
    let mut buttons = watch_buttons(Vec::new());
    let mut stopping: Option<Stopping> = None;
    loop {
        let searching = buttons.is_empty() && started.elapsed() < BUTTON_SEARCH;
        let timeout = match &stopping {
            Some(s) if !s.killed => Some(stop_timeout.saturating_sub(s.since.elapsed())),
            _ if searching => Some(Duration::from_millis(500)),
            _ => None,
        };
        let mut fds = vec![libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(buttons.iter().map(|b| libc::pollfd {
            fd: b.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if let Some(s) = &mut stopping {
            if !s.killed && s.since.elapsed() >= stop_timeout {
                crate::log!(
                    "app still running {} s after {stop_name} (stop_timeout): sending SIGKILL",
                    stop_timeout.as_secs()
                );
                // SAFETY: plain kill(2); the app leads its own process group (setsid).
                unsafe {
                    libc::kill(-app, libc::SIGKILL);
                    libc::kill(app, libc::SIGKILL);
                }
                s.killed = true;
            }
        }
        if n == 0 {
            if searching {
                buttons = watch_buttons(buttons);
                if buttons.is_empty() && started.elapsed() >= BUTTON_SEARCH {
                    crate::log!(
                        "no power button in {}: the machine stops when the app exits",
                        crate::button::INPUT_DIR
                    );
                }
            }
            continue;
        }
        let mut gone = Vec::new();
        for (i, pfd) in fds.iter().enumerate().skip(1) {
            if pfd.revents == 0 {
                continue;
            }
            let Some(b) = buttons.get(i - 1) else {
                continue;
            };
            match b.read_pressed() {
                Ok(false) => {}
                Ok(true) => match &stopping {
                    None => {
                        crate::log!(
                            "power button: stopping the app: {stop_name}, SIGKILL if still running after {} s",
                            stop_timeout.as_secs()
                        );
                        // SAFETY: plain kill(2).
                        unsafe { libc::kill(app, stop_signal) };
                        stopping = Some(Stopping {
                            since: Instant::now(),
                            killed: false,
                        });
                    }
                    Some(s) => crate::log!(
                        "power button again: already stopping ({:.1} s since {stop_name})",
                        s.since.elapsed().as_secs_f64()
                    ),
                },
                Err(e) => {
                    crate::log!("{} ({}): {e}; no longer watched", b.path, b.name);
                    gone.push(i - 1);
                }
            }
        }
        for i in gone.into_iter().rev() {
            buttons.remove(i);
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: zeroed signalfd_siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is a writable buffer of `size` bytes.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("reading signalfd");
        }
        if n as usize != size {
            continue;
        }
        let sig = info.ssi_signo as libc::c_int;
        if sig == libc::SIGCHLD {
            if let Some(exit) = reap(app) {
                if let Some(s) = &stopping {
                    crate::log!(
                        "app stopped {:.1} s after {stop_name}",
                        s.since.elapsed().as_secs_f64()
                    );
                }
                return Ok(exit);
            }
        } else if FORWARDED.contains(&sig) {
            crate::log!("forwarding {} to the app", signal_name(sig));
            // SAFETY: plain kill(2).
            unsafe { libc::kill(app, sig) };
        }
    }
}

/// The power buttons to watch: `have`, or when it is empty a new search (logged).
fn watch_buttons(have: Vec<crate::button::Button>) -> Vec<crate::button::Button> {
    if !have.is_empty() {
        return have;
    }
    let found = crate::button::find();
    for b in &found {
        crate::log!("watching {} ({}) for the power button", b.path, b.name);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_signal_is_the_plans_else_sigterm() {
        let mut app = AppConfig {
            argv: vec!["/app".into()],
            workdir: "/".into(),
            env: BTreeMap::new(),
            uid: 1000,
            gid: 1000,
            env_args: None,
            stop_timeout: 30,
            stop_signal: None,
            writable: Vec::new(),
        };
        assert_eq!(stop_signal_of(&app), libc::SIGTERM);
        for (name, sig) in [
            ("SIGINT", 2),
            ("SIGQUIT", 3),
            ("SIGHUP", 1),
            ("SIGUSR1", 10),
            ("SIGUSR2", 12),
            ("SIGWINCH", 28),
        ] {
            app.stop_signal = Some(name.into());
            assert_eq!(stop_signal_of(&app), sig, "{name}");
            assert_eq!(signal_name(sig), name);
        }
        for (name, sig) in STOP_SIGNALS {
            assert_eq!(signal_name(sig), name, "signal_name({sig})");
        }
        assert_eq!(stop_signal_number("SIGSTOP"), None);
        assert_eq!(stop_signal_number("sigint"), None);
    }

    #[test]
    fn env_args_words_go_after_the_defaults() {
        let app = AppConfig {
            argv: vec![
                "/java".into(),
                "-Xdefault".into(),
                "-jar".into(),
                "/app/a.jar".into(),
            ],
            workdir: "/app".into(),
            env: BTreeMap::new(),
            uid: 1000,
            gid: 1000,
            env_args: Some(crate::config::EnvArgs {
                var: "JAVA_OPTS".into(),
                at: 2,
            }),
            stop_timeout: 30,
            stop_signal: None,
            writable: Vec::new(),
        };
        let mut env = BTreeMap::new();
        assert_eq!(with_env_args(&app, &env), app.argv);
        env.insert("JAVA_OPTS".to_string(), "  -Xmx64m\t-Dx=y ".to_string());
        assert_eq!(
            with_env_args(&app, &env),
            [
                "/java",
                "-Xdefault",
                "-Xmx64m",
                "-Dx=y",
                "-jar",
                "/app/a.jar"
            ]
        );
    }

    #[test]
    fn env_file_lines() {
        let text = b"# comment\n\nA=1\n  B = two words \nC=\"quoted # not a comment\"\nD='single'\n\
            E=\"unbalanced'\nF=\nG=a=b\r\nbad line\n1X=no\n=empty\nA=override\n   # indented comment\n";
        let f = parse_env_file(text);
        let get = |k: &str| f.vars.get(k).map(String::as_str);
        assert_eq!(get("A"), Some("override"));
        assert_eq!(get("B"), Some(" two words "));
        assert_eq!(get("C"), Some("quoted # not a comment"));
        assert_eq!(get("D"), Some("single"));
        assert_eq!(get("E"), Some("\"unbalanced'"));
        assert_eq!(get("F"), Some(""));
        assert_eq!(get("G"), Some("a=b"), "CR stripped, only first = splits");
        assert_eq!(f.vars.len(), 7);
        assert_eq!(f.bad_lines, vec![10, 11, 12]);
    }

    #[test]
    fn env_file_invalid_bytes_are_reported_by_line() {
        let f = parse_env_file(b"OK=1\nBAD=\xff\xfe\nNUL=a\0b\nQ=\"\n");
        assert_eq!(f.vars.get("OK").map(String::as_str), Some("1"));
        assert_eq!(
            f.vars.get("Q").map(String::as_str),
            Some("\""),
            "lone quote kept"
        );
        assert_eq!(f.bad_lines, vec![2, 3]);
        assert_eq!(parse_env_file(b""), EnvFile::default());
    }

    #[test]
    fn env_precedence() {
        let defaults: BTreeMap<String, String> = [("GREETING", "world"), ("PORT", "8080")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let overrides: BTreeMap<String, String> = [("PORT", "9090"), ("HOME", "/data")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = build_env("/app", &defaults, &BTreeMap::new());
        assert_eq!(env.get("PATH").map(String::as_str), Some(DEFAULT_PATH));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/app"));
        assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
        let env = build_env("/app", &defaults, &overrides);
        assert_eq!(env.get("PORT").map(String::as_str), Some("9090"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/data"));
        assert_eq!(env.get("GREETING").map(String::as_str), Some("world"));
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn exit_status_decoding() {
        assert_eq!(Exit::from_status(3 << 8), Exit::Code(3));
        assert_eq!(Exit::from_status(0), Exit::Code(0));
        assert_eq!(Exit::from_status(libc::SIGKILL), Exit::Signal(9));
        assert_eq!(Exit::Code(3).to_string(), "exited with code 3");
        assert_eq!(
            Exit::Signal(15).to_string(),
            "killed by signal 15 (SIGTERM)"
        );
    }
}
