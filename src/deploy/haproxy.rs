//! The HAProxy switch: servers added to and removed from one backend over HAProxy's runtime
//! API on its admin socket (`stats socket PATH level admin`): `add server`, `enable server`,
//! `set server ... state drain|maint`, `show servers state`, `show stat`, `del server`. One
//! command per connection (HAProxy answers and closes).

use super::model::{Server, Switch};
use crate::envs::HaproxySpec;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest answer read (a `show stat` of a big config is a few hundred KiB).
const MAX_ANSWER: u64 = 16 << 20;

pub struct Haproxy {
    spec: HaproxySpec,
}

impl Haproxy {
    pub fn new(spec: HaproxySpec) -> Haproxy {
        Haproxy { spec }
    }

    /// Sends one runtime API command and returns HAProxy's answer.
    pub fn command(&self, cmd: &str) -> Result<String> {
        let sock = &self.spec.socket;
        let mut s = UnixStream::connect(sock).with_context(|| {
            format!(
                "cannot connect to HAProxy's admin socket {} (is haproxy running with \
                 `stats socket {} level admin`?)",
                sock.display(),
                sock.display()
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .with_context(|| format!("HAProxy {}: cannot send {cmd:?}", sock.display()))?;
        let mut out = String::new();
        s.take(MAX_ANSWER)
            .read_to_string(&mut out)
            .with_context(|| format!("HAProxy {}: no answer to {cmd:?}", sock.display()))?;
        if out.contains("Permission denied") || out.contains("Unknown command") {
            bail!(
                "HAProxy {}: {cmd:?} refused: {} (the socket needs `level admin`, HAProxy >= 2.6)",
                sock.display(),
                out.trim()
            );
        }
        Ok(out)
    }

    fn target(&self, s: &Server) -> String {
        format!("{}/{}", self.spec.backend, s.name)
    }

    /// `show servers state BACKEND`: (name, operational state, admin state) per server.
    fn states(&self) -> Result<Vec<(String, u32, u32)>> {
        let out = self.command(&format!("show servers state {}", self.spec.backend))?;
        Ok(parse_states(&out))
    }
}

/// Parses `show servers state` (format 1: be_id be_name srv_id srv_name srv_addr
/// srv_op_state srv_admin_state ...). Pure.
pub fn parse_states(out: &str) -> Vec<(String, u32, u32)> {
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 7 {
                return None;
            }
            Some((f[3].to_string(), f[5].parse().ok()?, f[6].parse().ok()?))
        })
        .collect()
}

/// Current sessions (`scur`) of `server` in `backend` from `show stat` CSV. Pure.
pub fn parse_scur(csv: &str, backend: &str, server: &str) -> Option<u64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = header.iter().position(|h| *h == "scur")?;
    lines.find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.first() == Some(&backend) && f.get(1) == Some(&server))
            .then(|| f.get(col)?.parse().ok())
            .flatten()
    })
}

fn ok_or_gone(out: &str) -> bool {
    let o = out.trim();
    o.is_empty()
        || o.starts_with("New server registered")
        || o.starts_with("Server deleted")
        || o.contains("No such server")
}

impl Switch for Haproxy {
    fn check(&mut self) -> Result<()> {
        let out = self.command("show backend")?;
        if !out.lines().any(|l| l.trim() == self.spec.backend) {
            bail!(
                "HAProxy {} has no backend {:?} (backends: {}): add `backend {}` to haproxy.cfg",
                self.spec.socket.display(),
                self.spec.backend,
                out.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.spec.backend
            );
        }
        Ok(())
    }

    fn add(&mut self, s: &Server) -> Result<()> {
        let addr = s
            .address
            .as_deref()
            .with_context(|| format!("{} has no address to send traffic to", s.name))?;
        let t = self.target(s);
        let out = self.command(&format!("add server {t} {addr}"))?;
        if !out.contains("New server registered") && !out.contains("Already exists") {
            bail!("HAProxy: add server {t} {addr}: {}", out.trim());
        }
        let out = self.command(&format!("enable server {t}"))?;
        if !out.trim().is_empty() {
            bail!("HAProxy: enable server {t}: {}", out.trim());
        }
        Ok(())
    }

    fn healthy(&mut self, s: &Server) -> Result<bool> {
        // srv_op_state 2 = running; srv_admin_state 0 = ready (not maint, not drain).
        Ok(self
            .states()?
            .iter()
            .any(|(n, op, admin)| *n == s.name && *op == 2 && *admin == 0))
    }

    fn drain(&mut self, s: &Server) -> Result<()> {
        let t = self.target(s);
        let out = self.command(&format!("set server {t} state drain"))?;
        if !ok_or_gone(&out) {
            bail!("HAProxy: set server {t} state drain: {}", out.trim());
        }
        Ok(())
    }

    fn sessions(&mut self, s: &Server) -> Result<u64> {
        let csv = self.command("show stat")?;
        Ok(parse_scur(&csv, &self.spec.backend, &s.name).unwrap_or(0))
    }

    fn remove(&mut self, s: &Server) -> Result<()> {
        let t = self.target(s);
        if !self.states()?.iter().any(|(n, _, _)| *n == s.name) {
            return Ok(());
        }
        let out = self.command(&format!("set server {t} state maint"))?;
        if !ok_or_gone(&out) {
            bail!("HAProxy: set server {t} state maint: {}", out.trim());
        }
        // `del server` is refused while connections are still open: they end soon.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.command(&format!("del server {t}"))?;
            if ok_or_gone(&out) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("HAProxy: del server {t}: {}", out.trim());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_sessions_parse() {
        let st = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state x\n\
                  3 hello 1 fuse-test-a 127.0.0.1 2 0 1 1 5 6 0 0 0 0 0\n\
                  3 hello 2 fuse-test-b 127.0.0.1 0 1 1 1 5 6 0 0 0 0 0\n";
        assert_eq!(
            parse_states(st),
            vec![("fuse-test-a".into(), 2, 0), ("fuse-test-b".into(), 0, 1)]
        );
        let csv =
            "# pxname,svname,qcur,qmax,scur,smax\nhello,fuse-a,0,0,3,4\nhello,BACKEND,0,0,3,4\n";
        assert_eq!(parse_scur(csv, "hello", "fuse-a"), Some(3));
        assert_eq!(parse_scur(csv, "hello", "fuse-b"), None);
    }
}
