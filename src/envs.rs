//! Environments of `fuse-envs.toml` that run servers: the `[env.NAME]` tables (target,
//! instances, config, health timeout, drain, identity gate) and their per-target tables
//! (`[env.NAME.libvirt]`, `[env.NAME.haproxy]`). Parsed strictly: an unknown key or a bad
//! value is an error naming the key and the file. See docs/deploy.md.

use crate::budget::parse_duration_ms;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most servers one environment may run (a typo like 200 must not start 200 VMs).
pub const MAX_INSTANCES: u32 = 64;

/// One `[env.NAME]` table as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvToml {
    /// `libvirt` (this module), `aws` (src/deploy/aws).
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub instances: Option<u32>,
    /// KEY=VALUE env file, relative to the envs file.
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default)]
    pub health_timeout: Option<String>,
    #[serde(default)]
    pub drain: Option<String>,
    #[serde(default)]
    pub identity_gate: Option<bool>,
    #[serde(default)]
    pub libvirt: Option<LibvirtSpec>,
    #[serde(default)]
    pub haproxy: Option<HaproxySpec>,
    /// The AWS target's table, kept as TOML here; src/deploy/aws parses it strictly.
    #[serde(default)]
    pub aws: Option<toml::Table>,
}

/// `[env.NAME.libvirt]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSpec {
    /// libvirt URI (default `qemu:///system`).
    #[serde(default)]
    pub uri: Option<String>,
    /// User-mode networking: each server's app port is forwarded to a free port on this
    /// host address (default `127.0.0.1` when `network` is not set).
    #[serde(default)]
    pub forward: Option<String>,
    /// A libvirt network instead of user-mode networking (address from its DHCP lease).
    #[serde(default)]
    pub network: Option<String>,
    /// Storage pool for the image volumes (default `default`).
    #[serde(default)]
    pub pool: Option<String>,
    /// Directory of the pool when fuse creates it (default /var/lib/libvirt/images).
    #[serde(default)]
    pub pool_dir: Option<PathBuf>,
    /// Memory per server in MiB (default 512).
    #[serde(default)]
    pub memory: Option<u32>,
}

/// `[env.NAME.haproxy]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HaproxySpec {
    /// The admin socket (`stats socket PATH level admin`).
    pub socket: PathBuf,
    /// The backend servers are added to and removed from.
    pub backend: String,
}

/// An environment with a target, checked and with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSpec {
    pub name: String,
    pub target: String,
    pub instances: u32,
    /// Absolute or relative to the current directory (resolved against the envs file).
    pub config: Option<PathBuf>,
    pub health_timeout: Duration,
    pub drain: Duration,
    pub identity_gate: bool,
    pub libvirt: LibvirtSpec,
    pub haproxy: Option<HaproxySpec>,
    pub aws: Option<toml::Table>,
}

pub const TARGETS: &[&str] = &["libvirt", "aws"];

/// Checks one `[env.NAME]` table (`file` names the envs file in errors) and applies the
/// defaults; paths are resolved against the envs file's directory. Pure.
pub fn check_env_table(name: &str, t: &EnvToml, file: &Path) -> Result<Option<EnvSpec>> {
    let at = |key: &str| format!("{}: env.{name}.{key}", file.display());
    let Some(target) = &t.target else {
        if t.libvirt.is_some() || t.haproxy.is_some() || t.aws.is_some() || t.instances.is_some() {
            bail!("{}: set a target ({})", at("target"), TARGETS.join(", "));
        }
        return Ok(None);
    };
    if !TARGETS.contains(&target.as_str()) {
        bail!(
            "{}: unknown target {target:?} (expected one of {})",
            at("target"),
            TARGETS.join(", ")
        );
    }
    let instances = t.instances.unwrap_or(1);
    if instances == 0 || instances > MAX_INSTANCES {
        bail!(
            "{}: {instances} is not in 1..={MAX_INSTANCES}",
            at("instances")
        );
    }
    let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration> {
        match v {
            None => Ok(Duration::from_millis(default)),
            Some(s) => {
                let ms = parse_duration_ms(s).with_context(|| at(key))?;
                if ms > 24 * 3600 * 1000 {
                    bail!("{}: {s:?} is longer than a day", at(key));
                }
                Ok(Duration::from_millis(ms))
            }
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let libvirt = t.libvirt.clone().unwrap_or_default();
    if target == "libvirt" {
        if libvirt.forward.is_some() && libvirt.network.is_some() {
            bail!("{}: set forward or network, not both", at("libvirt"));
        }
        if libvirt.network.is_some() {
            bail!(
                "{}: libvirt networks are not supported yet: use forward = \"127.0.0.1\"",
                at("libvirt.network")
            );
        }
        if let Some(f) = &libvirt.forward {
            f.parse::<std::net::IpAddr>().with_context(|| {
                format!("{}: {f:?} is not an IP address", at("libvirt.forward"))
            })?;
        }
        if let Some(m) = libvirt.memory {
            if !(64..=65536).contains(&m) {
                bail!("{}: {m} MiB is not in 64..=65536", at("libvirt.memory"));
            }
        }
        if let Some(p) = &libvirt.pool {
            if !safe_name(p) {
                bail!("{}: {p:?} must be [A-Za-z0-9._-]+", at("libvirt.pool"));
            }
        }
        let Some(h) = &t.haproxy else {
            bail!(
                "{}: a libvirt environment needs [env.{name}.haproxy] (socket, backend)",
                at("haproxy")
            );
        };
        if !safe_name(&h.backend) {
            bail!(
                "{}: {:?} must be [A-Za-z0-9._-]+",
                at("haproxy.backend"),
                h.backend
            );
        }
    }
    Ok(Some(EnvSpec {
        name: name.to_string(),
        target: target.clone(),
        instances,
        config: t.config.as_ref().map(|c| base.join(c)),
        health_timeout: dur("health_timeout", &t.health_timeout, 180_000)?,
        drain: dur("drain", &t.drain, 10_000)?,
        identity_gate: t.identity_gate.unwrap_or(true),
        libvirt,
        haproxy: t.haproxy.clone().map(|mut h| {
            h.socket = base.join(&h.socket);
            h
        }),
        aws: t.aws.clone(),
    }))
}

/// Names fuse passes to libvirt and HAProxy: no separators, no spaces, no quotes.
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::parse_envs;

    const GOOD: &str = r#"
order = ["test", "prod"]
[env.test]
target = "libvirt"
instances = 2
config = "test.env"
health_timeout = "180s"
drain = "10s"
identity_gate = true
[env.test.libvirt]
uri = "qemu:///system"
forward = "127.0.0.1"
[env.test.haproxy]
socket = "/run/haproxy/admin.sock"
backend = "hello"
"#;

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let f = Path::new("/p/fuse-envs.toml");
        let e = parse_envs(GOOD, f).unwrap();
        let t = e.envs[0].clone();
        assert_eq!(t.name, "test");
        assert_eq!(t.instances, 2);
        assert_eq!(t.config.as_deref(), Some(Path::new("/p/test.env")));
        assert_eq!(t.health_timeout, Duration::from_secs(180));
        assert_eq!(t.drain, Duration::from_secs(10));
        assert!(t.identity_gate);
        assert_eq!(t.haproxy.unwrap().backend, "hello");
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let f = Path::new("/p/fuse-envs.toml");
        for (bad, key) in [
            (
                GOOD.replace("instances = 2", "instances = 0"),
                "env.test.instances",
            ),
            (GOOD.replace("instances = 2", "instancs = 2"), "instancs"),
            (
                GOOD.replace("\"180s\"", "\"soon\""),
                "env.test.health_timeout",
            ),
            (
                GOOD.replace("\"libvirt\"\n", "\"vmware\"\n"),
                "env.test.target",
            ),
            (
                GOOD.replace("forward = \"127.0.0.1\"", "forward = \"here\""),
                "env.test.libvirt.forward",
            ),
            (
                GOOD.replace("backend = \"hello\"", "backend = \"a b\""),
                "env.test.haproxy.backend",
            ),
            (GOOD.replace("uri =", "url ="), "url"),
            (GOOD.replace("[env.test]", "[env.Test]"), "Test"),
            (
                GOOD.replace("order = [\"test\", \"prod\"]", "order = [\"prod\"]"),
                "test",
            ),
        ] {
            let e = format!("{:#}", parse_envs(&bad, f).unwrap_err());
            assert!(
                e.contains(key) && e.contains("/p/fuse-envs.toml"),
                "{key}: {e}"
            );
        }
        let no_switch = GOOD.split("[env.test.haproxy]").next().unwrap();
        let e = format!("{:#}", parse_envs(no_switch, f).unwrap_err());
        assert!(e.contains("env.test.haproxy"), "{e}");
    }
}
