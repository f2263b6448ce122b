//! `/fuse/boot.json`: what the image builder tells init (modules, layers, the app to run).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Where the image builder puts the boot configuration inside the initramfs.
pub const BOOT_JSON: &str = "/fuse/boot.json";

/// The only `format` this init understands.
pub const FORMAT: u32 = 1;

/// The whole of `/fuse/boot.json`. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Version of this file's layout; must be [`FORMAT`].
    pub format: u32,
    /// Host name used when DHCP does not hand one out.
    pub hostname: String,
    /// Absolute paths of kernel modules inside the initramfs, in dependency order
    /// (each module after the ones it depends on).
    pub modules: Vec<String>,
    /// Kernel modules loaded only when a present device needs them: the init matches each
    /// device's sysfs `modalias` against the modules' alias patterns (from `.modinfo`), and
    /// loads the matching modules with their dependencies, in this list's order.
    #[serde(default)]
    pub device_modules: Vec<DeviceModule>,
    /// Layer names, bottom (changes least) to top. Layer `x` is the GPT partition
    /// named `fuse-x`.
    pub layers: Vec<String>,
    /// File system type of every layer partition (e.g. `squashfs`, `erofs`), mounted read-only.
    pub fs_type: String,
    /// Per layer: its partition's GPT GUID and its dm-verity parameters. Every layer has
    /// one: layers are only ever mounted through a verified device.
    pub verity: BTreeMap<String, LayerVerity>,
    /// The program to run once the system is up.
    pub app: AppConfig,
}

/// One entry of [`BootConfig::device_modules`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceModule {
    /// Module name (underscores), as other entries' `depends` name it.
    pub name: String,
    /// Absolute path of the `.ko` inside the initramfs.
    pub path: String,
    /// Modules to load first (names; ones not in the list are built in or always loaded).
    #[serde(default)]
    pub depends: Vec<String>,
    /// Glob patterns (fnmatch: `*`, `?`, `[...]`) over device modaliases; empty for a module
    /// loaded only as another's dependency.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The app: how it is started inside the new root.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Full command line; `argv[0]` is an absolute path inside the image (no PATH search).
    pub argv: Vec<String>,
    /// Working directory (absolute, inside the image); also `HOME`.
    pub workdir: String,
    /// Default environment; an environment's env file overrides it at boot.
    pub env: BTreeMap<String, String>,
    /// User id the app runs as (0 only when explicitly asked for).
    pub uid: u32,
    /// Group id the app runs as; supplementary groups are cleared.
    pub gid: u32,
    /// An environment variable whose whitespace-separated words are inserted into argv at
    /// index `at` (e.g. JAVA_OPTS after the JVM's default flags), so no shell is needed.
    #[serde(default)]
    pub env_args: Option<EnvArgs>,
    /// Seconds between SIGTERM and SIGKILL when the machine is asked to stop (ACPI power
    /// button).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u32,
    /// The signal that asks the app to stop (a container's StopSignal: one of
    /// [`crate::app::STOP_SIGNALS`] by name); absent: SIGTERM.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Absolute directories mounted as tmpfs owned by the app user (their content in the
    /// image copied in), so an app can write next to itself.
    #[serde(default)]
    pub writable: Vec<String>,
}

/// The stop timeout when boot.json names none.
pub const DEFAULT_STOP_TIMEOUT: u32 = 30;
/// The longest stop timeout init accepts (one hour).
pub const MAX_STOP_TIMEOUT: u32 = 3600;

fn default_stop_timeout() -> u32 {
    DEFAULT_STOP_TIMEOUT
}

/// Top-level directories a `writable` path must not be in (or be): the API file systems
/// init mounts itself, and the system's own files.
pub const NOT_WRITABLE: &[&str] = &[
    "proc", "sys", "dev", "run", "tmp", "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64",
    "libx32", "boot", "fuse",
];

/// Checks a `writable` path: absolute, plain components of `[A-Za-z0-9._@+-]` (no `.`,
/// `..` or empty ones), not `/` and not inside [`NOT_WRITABLE`]. The builder applies the
/// same rule (src/manifest.rs); this is the init's own check.
pub fn check_writable(path: &str) -> std::result::Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("is not an absolute path".into());
    };
    if rest.is_empty() {
        return Err("is the root directory".into());
    }
    if path.len() > 256 {
        return Err("is longer than 256 bytes".into());
    }
    for c in rest.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err("has an empty, `.` or `..` component".into());
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
        {
            return Err(format!(
                "component {c:?} has characters other than [A-Za-z0-9._@+-]"
            ));
        }
    }
    let top = rest.split('/').next().unwrap_or(rest);
    if NOT_WRITABLE.contains(&top) {
        return Err(format!(
            "is inside /{top}, which init manages or the system owns"
        ));
    }
    Ok(())
}

/// How layer `x` is found and checked (see the builder's `format::verity`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerVerity {
    /// The partition's GPT unique GUID (lower-case text form).
    pub partuuid: String,
    /// File-system blocks (4096 bytes) covered by the hash tree.
    pub data_blocks: u64,
    /// First block (4096 bytes) of the hash tree in the same partition.
    pub hash_start_block: u64,
    /// sha256 root hash, hex.
    pub root_hash: String,
    /// Salt, hex.
    pub salt: String,
}

fn is_hex(s: &str, len: Option<usize>) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(2)
        && len.is_none_or(|l| s.len() == l)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// See [`AppConfig::env_args`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvArgs {
    pub var: String,
    pub at: usize,
}

/// Parses and validates the text of `boot.json`.
pub fn parse(text: &str) -> Result<BootConfig> {
    let cfg: BootConfig = serde_json::from_str(text).context("boot.json is not valid")?;
    cfg.validate()?;
    Ok(cfg)
}

/// Reads and parses [`BOOT_JSON`].
pub fn load() -> Result<BootConfig> {
    let text =
        std::fs::read_to_string(BOOT_JSON).with_context(|| format!("reading {BOOT_JSON}"))?;
    parse(&text)
}

/// True for an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True for a host name we are willing to set: 1..=64 of `[A-Za-z0-9.-]`, not starting with
/// `-` or `.`.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// True for a layer name: `[a-z0-9-]+` (it becomes part of a path and of mount options).
pub fn valid_layer_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl BootConfig {
    /// Checks everything init relies on later, so that mistakes show up as one clear error.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "boot.json: format is {}, this init understands format {FORMAT}",
                self.format
            );
        }
        if !valid_hostname(&self.hostname) {
            bail!(
                "boot.json: hostname {:?} is not a valid host name ([A-Za-z0-9.-], at most 64)",
                self.hostname
            );
        }
        for m in &self.modules {
            if !m.starts_with('/') || m.contains('\0') {
                bail!("boot.json: module path {m:?} is not an absolute path");
            }
        }
        for m in &self.device_modules {
            if !m.path.starts_with('/') || m.path.contains('\0') || m.name.is_empty() {
                bail!(
                    "boot.json: device module {:?} at {:?} needs a name and an absolute path",
                    m.name,
                    m.path
                );
            }
        }
        if self.layers.is_empty() {
            bail!("boot.json: layers is empty, need at least one layer");
        }
        for (i, l) in self.layers.iter().enumerate() {
            if !valid_layer_name(l) {
                bail!("boot.json: layer name {l:?} is not [a-z0-9-]+");
            }
            if self
                .layers
                .get(..i)
                .is_some_and(|before| before.contains(l))
            {
                bail!("boot.json: layer {l:?} is listed twice");
            }
        }
        for l in &self.layers {
            let Some(v) = self.verity.get(l) else {
                bail!("boot.json: layer {l:?} has no verity entry (every layer is verified)");
            };
            let guid_ok = v.partuuid.len() == 36
                && v.partuuid.bytes().enumerate().all(|(i, b)| {
                    if [8, 13, 18, 23].contains(&i) {
                        b == b'-'
                    } else {
                        b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                    }
                });
            if !guid_ok {
                bail!(
                    "boot.json: layer {l:?}: partuuid {:?} is not a lower-case GUID",
                    v.partuuid
                );
            }
            if !is_hex(&v.root_hash, Some(64)) || !is_hex(&v.salt, None) || v.salt.len() > 512 {
                bail!("boot.json: layer {l:?}: root_hash or salt is not lower-case hex");
            }
            if v.data_blocks == 0 || v.hash_start_block <= v.data_blocks {
                bail!("boot.json: layer {l:?}: hash tree must start after the data blocks");
            }
        }
        if self.verity.len() != self.layers.len() {
            bail!("boot.json: verity lists a layer that is not in layers");
        }
        if self.fs_type.is_empty()
            || !self
                .fs_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            bail!(
                "boot.json: fs_type {:?} is not a file system type name",
                self.fs_type
            );
        }
        let app = &self.app;
        match app.argv.first() {
            None => bail!("boot.json: app.argv is empty"),
            Some(a0) if !a0.starts_with('/') => {
                bail!("boot.json: app.argv[0] {a0:?} must be an absolute path")
            }
            Some(_) => {}
        }
        if app.argv.iter().any(|a| a.contains('\0')) {
            bail!("boot.json: app.argv contains a NUL byte");
        }
        if !app.workdir.starts_with('/') || app.workdir.contains('\0') {
            bail!(
                "boot.json: app.workdir {:?} must be an absolute path",
                app.workdir
            );
        }
        if let Some(e) = &app.env_args {
            if !valid_env_key(&e.var) || e.at == 0 || e.at > app.argv.len() {
                bail!(
                    "boot.json: app.env_args {:?} at {} is not a variable inserted within argv",
                    e.var,
                    e.at
                );
            }
        }
        if app.stop_timeout > MAX_STOP_TIMEOUT {
            bail!(
                "boot.json: app.stop_timeout {} is over {MAX_STOP_TIMEOUT} seconds",
                app.stop_timeout
            );
        }
        if let Some(s) = &app.stop_signal {
            if crate::app::stop_signal_number(s).is_none() {
                bail!(
                    "boot.json: app.stop_signal {s:?} is not one of {}",
                    crate::app::STOP_SIGNALS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        for (i, w) in app.writable.iter().enumerate() {
            if let Err(why) = check_writable(w) {
                bail!("boot.json: app.writable {w:?} {why}");
            }
            if app.writable.get(..i).is_some_and(|b| b.contains(w)) {
                bail!("boot.json: app.writable {w:?} is listed twice");
            }
        }
        for (k, v) in &app.env {
            if !valid_env_key(k) {
                bail!("boot.json: app.env key {k:?} is not a valid variable name");
            }
            if v.contains('\0') {
                bail!("boot.json: app.env value of {k} contains a NUL byte");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "format": 1,
      "hostname": "hello",
      "modules": ["/lib/modules/6.1.0-28-amd64/kernel/drivers/virtio/virtio.ko"],
      "layers": ["base", "app"],
      "fs_type": "squashfs",
      "verity": {
        "base": {"partuuid": "0b6f4a2c-1d3e-4f50-8a61-72839405a6b7", "data_blocks": 1, "hash_start_block": 2,
                 "root_hash": "5ab5c7f2d4b6a8e0c1d3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5", "salt": "00ff"},
        "app": {"partuuid": "1c7f5b3d-2e4f-4061-9b72-8394a516b7c8", "data_blocks": 65, "hash_start_block": 66,
                "root_hash": "6bc6d8f3e5c7b9f1d2e4f6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6", "salt": "11"}
      },
      "app": {
        "argv": ["/app/hello", "--flag"],
        "workdir": "/app",
        "env": {"GREETING": "world", "PORT": "8080"},
        "uid": 1000,
        "gid": 1000
      }
    }"#;

    #[test]
    fn parses_the_documented_example() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.format, 1);
        assert_eq!(c.hostname, "hello");
        assert_eq!(
            c.modules,
            vec!["/lib/modules/6.1.0-28-amd64/kernel/drivers/virtio/virtio.ko"]
        );
        assert_eq!(c.layers, vec!["base", "app"]);
        assert_eq!(c.fs_type, "squashfs");
        assert_eq!(c.app.argv, vec!["/app/hello", "--flag"]);
        assert_eq!(c.app.workdir, "/app");
        assert_eq!(c.app.env.get("GREETING").map(String::as_str), Some("world"));
        assert_eq!(c.app.env.get("PORT").map(String::as_str), Some("8080"));
        assert_eq!((c.app.uid, c.app.gid), (1000, 1000));
        assert_eq!(c.app.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert!(c.app.writable.is_empty());
    }

    #[test]
    fn stop_timeout_and_writable() {
        let text = SAMPLE.replace(
            "\"gid\": 1000",
            "\"gid\": 1000, \"stop_timeout\": 5, \"writable\": [\"/app/logs\", \"/var/cache/x\"]",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.app.stop_timeout, 5);
        assert_eq!(c.app.writable, ["/app/logs", "/var/cache/x"]);
        for (bad, want) in [
            ("\"app/logs\"", "absolute"),
            ("\"/\"", "root directory"),
            ("\"/app/../etc\"", "`..`"),
            ("\"/app//x\"", "empty"),
            ("\"/proc/x\"", "inside /proc"),
            ("\"/usr\"", "inside /usr"),
            ("\"/app/a b\"", "characters"),
            ("\"/app/x\", \"/app/x\"", "twice"),
        ] {
            let text = SAMPLE.replace(
                "\"gid\": 1000",
                &format!("\"gid\": 1000, \"writable\": [{bad}]"),
            );
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
        let long = SAMPLE.replace("\"gid\": 1000", "\"gid\": 1000, \"stop_timeout\": 3601");
        assert!(format!("{:#}", parse(&long).unwrap_err()).contains("stop_timeout"));
    }

    #[test]
    fn stop_signal_by_name_and_unknown_names_refused() {
        assert_eq!(parse(SAMPLE).unwrap().app.stop_signal, None);
        let quit = SAMPLE.replace(
            "\"gid\": 1000",
            "\"gid\": 1000, \"stop_signal\": \"SIGQUIT\"",
        );
        assert_eq!(
            parse(&quit).unwrap().app.stop_signal.as_deref(),
            Some("SIGQUIT")
        );
        for bad in ["\"SIGFOO\"", "\"SIGSTOP\"", "\"quit\"", "\"3\"", "3"] {
            let text = SAMPLE.replace(
                "\"gid\": 1000",
                &format!("\"gid\": 1000, \"stop_signal\": {bad}"),
            );
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                e.contains("stop_signal") || e.contains("string"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn rejects_unknown_keys_at_both_levels() {
        let top = SAMPLE.replace("\"format\": 1,", "\"format\": 1, \"extra\": true,");
        let e = format!("{:#}", parse(&top).unwrap_err());
        assert!(e.contains("unknown field `extra`"), "{e}");
        let inner = SAMPLE.replace("\"uid\": 1000,", "\"uid\": 1000, \"user\": \"x\",");
        let e = format!("{:#}", parse(&inner).unwrap_err());
        assert!(e.contains("unknown field `user`"), "{e}");
    }

    #[test]
    fn rejects_missing_keys_and_wrong_types() {
        let missing = SAMPLE.replace("\"fs_type\": \"squashfs\",", "");
        assert!(format!("{:#}", parse(&missing).unwrap_err()).contains("fs_type"));
        let wrong = SAMPLE.replace("\"uid\": 1000", "\"uid\": -1");
        assert!(parse(&wrong).is_err());
        assert!(parse("").is_err());
        assert!(parse("[]").is_err());
        assert!(parse("{\"format\": 1").is_err());
    }

    #[test]
    fn validates_semantics() {
        let cases = [
            ("\"format\": 1", "\"format\": 2", "format is 2"),
            (
                "\"layers\": [\"base\", \"app\"]",
                "\"layers\": []",
                "layers is empty",
            ),
            (
                "\"layers\": [\"base\", \"app\"]",
                "\"layers\": [\"base\", \"base\"]",
                "twice",
            ),
            (
                "\"layers\": [\"base\", \"app\"]",
                "\"layers\": [\"../x\"]",
                "not [a-z0-9-]+",
            ),
            (
                "\"argv\": [\"/app/hello\", \"--flag\"]",
                "\"argv\": []",
                "argv is empty",
            ),
            (
                "\"argv\": [\"/app/hello\", \"--flag\"]",
                "\"argv\": [\"hello\"]",
                "absolute",
            ),
            ("\"workdir\": \"/app\"", "\"workdir\": \"app\"", "workdir"),
            ("\"GREETING\"", "\"1BAD\"", "not a valid variable name"),
            (
                "\"hostname\": \"hello\"",
                "\"hostname\": \"a b\"",
                "host name",
            ),
            (
                "\"fs_type\": \"squashfs\"",
                "\"fs_type\": \"squash,fs\"",
                "fs_type",
            ),
        ];
        for (from, to, want) in cases {
            let text = SAMPLE.replace(from, to);
            assert_ne!(text, SAMPLE, "replacement {from} did not apply");
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn every_layer_needs_a_well_formed_verity_entry() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.verity["app"].data_blocks, 65);
        assert_eq!(c.verity["app"].hash_start_block, 66);
        let cases = [
            (
                "\"app\": {\"partuuid\"",
                "\"apx\": {\"partuuid\"",
                "no verity entry",
            ),
            ("1c7f5b3d-2e4f", "1C7F5B3D-2E4F", "partuuid"),
            ("\"salt\": \"11\"", "\"salt\": \"1\"", "hex"),
            (
                "\"hash_start_block\": 66",
                "\"hash_start_block\": 65",
                "after the data",
            ),
        ];
        for (from, to, want) in cases {
            let text = SAMPLE.replace(from, to);
            assert_ne!(text, SAMPLE, "replacement {from} did not apply");
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn env_key_and_hostname_rules() {
        assert!(valid_env_key("PATH"));
        assert!(valid_env_key("_x1"));
        assert!(!valid_env_key(""));
        assert!(!valid_env_key("1A"));
        assert!(!valid_env_key("A-B"));
        assert!(!valid_env_key("A=B"));
        assert!(valid_hostname("web-1.example"));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname(&"a".repeat(65)));
    }
}
