//! The gates a new server passes before it takes traffic: the identity gate (the init's
//! `verity roots:` console line names every layer's root, and they equal the image's
//! image.json) and the health gate (the image's [health] answers over HTTP, or the switch
//! judges it healthy). Servers are polled side by side, each against its own deadline.

use super::model::{tail, GateFailed, Image, Server, Switch, Target};
use anyhow::Result;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(500);
/// Console lines shown with a failure.
pub const TAIL: usize = 15;

/// The layer roots the init printed (`fuse-init: verity roots: NAME=ROOT ...`), if it did.
/// Only a whole line counts: the console is read while the guest writes it (at 115200
/// baud, a line of four roots takes 30 ms), and a line cut short names fewer roots, or a
/// root cut short, which is not a different identity.
pub fn printed_roots(console: &str) -> Option<BTreeMap<String, String>> {
    let line = console
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .find_map(|l| l.split("fuse-init: verity roots: ").nth(1))?;
    let mut out = BTreeMap::new();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        out.insert(k.to_string(), v.to_string());
    }
    Some(out)
}

/// The roots image.json records, by layer.
pub fn expected_roots(img: &Image) -> BTreeMap<String, String> {
    img.meta
        .layers
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                l.verity
                    .as_ref()
                    .map(|v| v.root_hash.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Why a console shows the server will never pass (the init gave up or the app ended).
pub fn dead(console: &str) -> Option<String> {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| {
            l.contains("fuse-init: FATAL")
                || l.contains("fuse-init: app exited")
                || l.contains("fuse-init: app killed")
                || l.contains("Kernel panic")
        })
        .map(str::to_string)
}

fn fail(target: &mut dyn Target, s: &Server, gate: &str, detail: String) -> anyhow::Error {
    let console = target.console(s).unwrap_or_default();
    GateFailed {
        server: s.name.clone(),
        gate: gate.to_string(),
        detail,
        console_tail: tail(&console, TAIL),
    }
    .into()
}

/// Waits until every server's console shows the init's roots line and checks it.
pub fn identity(
    target: &mut dyn Target,
    servers: &[Server],
    img: &Image,
    timeout: Duration,
) -> Result<()> {
    let want = expected_roots(img);
    let start = Instant::now();
    let mut done = vec![false; servers.len()];
    while done.iter().any(|d| !d) {
        for (i, s) in servers.iter().enumerate() {
            if done[i] {
                continue;
            }
            let console = target.console(s)?;
            if let Some(got) = printed_roots(&console) {
                if got != want {
                    let diff: Vec<String> = want
                        .iter()
                        .filter(|(k, v)| got.get(*k) != Some(v))
                        .map(|(k, v)| {
                            format!(
                                "layer {k}: booted {} , image.json {v}",
                                got.get(k).map(String::as_str).unwrap_or("(none)")
                            )
                        })
                        .chain(
                            got.keys()
                                .filter(|k| !want.contains_key(*k))
                                .map(|k| format!("layer {k} is not in image.json")),
                        )
                        .collect();
                    return Err(fail(
                        target,
                        s,
                        "identity",
                        format!(
                            "it booted other layers than {} ({})",
                            img.digest,
                            diff.join("; ")
                        ),
                    ));
                }
                done[i] = true;
                continue;
            }
            if let Some(why) = dead(&console) {
                return Err(fail(
                    target,
                    s,
                    "identity",
                    format!("no verity roots line before: {why}"),
                ));
            }
            if start.elapsed() > timeout {
                return Err(fail(
                    target,
                    s,
                    "identity",
                    format!(
                        "no verity roots line on its console within {}s",
                        timeout.as_secs()
                    ),
                ));
            }
        }
        if done.iter().any(|d| !d) {
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// Waits until every server answers the image's [health] (HTTP 2xx at its path, or a TCP
/// connect when it has none); fills each server's address.
pub fn http_health(
    target: &mut dyn Target,
    servers: &mut [Server],
    img: &Image,
    timeout: Duration,
) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let start = Instant::now();
    let mut last: Vec<String> = vec!["no address yet".into(); servers.len()];
    let mut done = vec![false; servers.len()];
    while done.iter().any(|d| !d) {
        for i in 0..servers.len() {
            if done[i] {
                continue;
            }
            if servers[i].address.is_none() {
                servers[i].address = target.address(&servers[i])?;
            }
            if let Some(addr) = servers[i].address.clone() {
                match &img.meta.app.health_http {
                    Some(path) => {
                        let url = format!("http://{addr}{path}");
                        match agent.get(&url).call() {
                            Ok(r) if r.status().is_success() => done[i] = true,
                            Ok(r) => last[i] = format!("{url} answered {}", r.status()),
                            Err(e) => last[i] = format!("{url}: {e}"),
                        }
                    }
                    None => match addr
                        .parse::<std::net::SocketAddr>()
                        .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)))
                    {
                        Ok(Ok(_)) => done[i] = true,
                        Ok(Err(e)) => last[i] = format!("tcp {addr}: {e}"),
                        Err(e) => last[i] = format!("address {addr}: {e}"),
                    },
                }
            }
            if done[i] {
                tracing::info!(
                    "{} healthy after {:.1}s",
                    servers[i].name,
                    start.elapsed().as_secs_f64()
                );
                continue;
            }
            let console = target.console(&servers[i])?;
            if let Some(why) = dead(&console) {
                return Err(fail(target, &servers[i], "health", why));
            }
            if start.elapsed() > timeout {
                return Err(fail(
                    target,
                    &servers[i],
                    "health",
                    format!("not healthy within {}s ({})", timeout.as_secs(), last[i]),
                ));
            }
        }
        if done.iter().any(|d| !d) {
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// Waits until the switch judges every server healthy.
pub fn switch_health(
    target: &mut dyn Target,
    switch: &mut dyn Switch,
    servers: &[Server],
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    for s in servers {
        loop {
            if switch.healthy(s)? {
                break;
            }
            if start.elapsed() > timeout {
                return Err(fail(
                    target,
                    s,
                    "health",
                    format!(
                        "the switch did not see it healthy within {}s",
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_line_is_found_and_parsed() {
        let c = "boot\r\n[ 1.2] fuse-init: verity roots: base=aa app=bb\r\nmore";
        let r = printed_roots(c).unwrap();
        assert_eq!(r["base"], "aa");
        assert_eq!(r["app"], "bb");
        assert_eq!(r.len(), 2);
        assert!(printed_roots("fuse-init: layer base: verified").is_none());
        // a line still being written is not read (the deploy test caught one cut short)
        assert!(printed_roots("boot\r\nfuse-init: verity roots: base=aa app=b").is_none());
        assert_eq!(
            printed_roots("fuse-init: verity roots: base=aa app=bb\n").map(|r| r.len()),
            Some(2)
        );
        assert!(dead("x\nfuse-init: app exited with code 3\n").is_some());
        assert!(dead("fuse-init: starting").is_none());
    }
}
