//! The libvirt target: servers are transient libvirt domains (type qemu, q35, OVMF pflash
//! with an nvram copy, `-cpu max`, a read-only virtio disk on the image's storage volume,
//! user-mode networking with the app port forwarded, the environment's config through
//! fw_cfg `opt/fuse/env`, the serial console in a file), driven through `virsh` and
//! libvirt's documented domain XML: fuse needs no libvirt library to build or to run its
//! other commands. libvirt 9.0 rejects passt, so the forward is QEMU's own
//! `-netdev user,hostfwd=...` in a `<qemu:commandline>` block, the NIC at a pinned address.

use super::model::{Image, Server, ServerSpec, Target, Upload};
use crate::envs::LibvirtSpec;
use crate::util::fs::write_atomic;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const DEFAULT_URI: &str = "qemu:///system";
pub const DEFAULT_POOL: &str = "default";
pub const DEFAULT_POOL_DIR: &str = "/var/lib/libvirt/images";
/// Console logs and config files of fuse's domains (read by QEMU, which runs as the
/// libvirt-qemu user: the directory is 0755, the files 0644).
pub const STATE_DIR: &str = "/var/lib/libvirt/fuse";
/// The domain metadata namespace fuse writes (environment and digest of a server).
pub const META_NS: &str = "https://github.com/fuse/deploy/1";
/// The NIC's PCI slot on pcie.0 (QEMU's own -device, outside libvirt's address plan).
pub const NIC_SLOT: &str = "0x11";

pub struct Libvirt {
    uri: String,
    pool: String,
    pool_dir: PathBuf,
    forward: String,
    memory: u32,
    state_dir: PathBuf,
}

impl Libvirt {
    pub fn new(spec: &LibvirtSpec) -> Libvirt {
        Libvirt {
            uri: spec.uri.clone().unwrap_or_else(|| DEFAULT_URI.into()),
            pool: spec.pool.clone().unwrap_or_else(|| DEFAULT_POOL.into()),
            pool_dir: spec
                .pool_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_POOL_DIR.into()),
            forward: spec.forward.clone().unwrap_or_else(|| "127.0.0.1".into()),
            memory: spec.memory.unwrap_or(512),
            state_dir: PathBuf::from(STATE_DIR),
        }
    }

    fn virsh_out(&self, args: &[&str]) -> Result<Output> {
        Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow::anyhow!(
                        "virsh not found: install libvirt-clients (and libvirt-daemon, \
                         libvirt-daemon-driver-qemu where the servers run)"
                    )
                } else {
                    anyhow::Error::from(e).context("cannot run virsh")
                }
            })
    }

    /// Runs `virsh -c URI ARGS`; an error names the command, the URI and virsh's message.
    fn virsh(&self, args: &[&str]) -> Result<String> {
        let o = self.virsh_out(args)?;
        if !o.status.success() {
            bail!(
                "virsh -c {} {}: {}",
                self.uri,
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn ok(&self, args: &[&str]) -> bool {
        self.virsh_out(args).is_ok_and(|o| o.status.success())
    }

    fn volume_name(img: &Image) -> String {
        format!("fuse-{}.img", img.digest.trim_start_matches("sha256:"))
    }

    /// The pool exists and is running: made as a directory pool when missing.
    fn ensure_pool(&self) -> Result<()> {
        if !self.ok(&["pool-info", &self.pool]) {
            tracing::info!(
                "libvirt {}: creating the directory pool {} at {}",
                self.uri,
                self.pool,
                self.pool_dir.display()
            );
            let dir = self.pool_dir.to_string_lossy().into_owned();
            self.virsh(&["pool-define-as", &self.pool, "dir", "--target", &dir])?;
            self.virsh(&["pool-build", &self.pool])?;
            let _ = self.virsh(&["pool-autostart", &self.pool]);
        }
        let info = self.virsh(&["pool-info", &self.pool])?;
        if !info
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("running"))
        {
            self.virsh(&["pool-start", &self.pool])?;
        }
        Ok(())
    }

    /// sha256 of a volume: read in place when its path is a local file, else downloaded.
    fn volume_digest(&self, vol: &str) -> Result<String> {
        let path = self.virsh(&["vol-path", "--pool", &self.pool, vol])?;
        let path = PathBuf::from(path.trim());
        if self.uri.contains("///") && path.is_file() {
            return file_sha256(&path);
        }
        let tmp = tempfile::NamedTempFile::new().context("cannot create a temp file")?;
        let t = tmp.path().to_string_lossy().into_owned();
        self.virsh(&["vol-download", "--pool", &self.pool, vol, &t])?;
        file_sha256(tmp.path())
    }

    fn state_file(&self, name: &str, ext: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.{ext}"))
    }

    /// The domains' names (running ones: servers are transient domains).
    fn domains(&self) -> Result<Vec<String>> {
        Ok(self
            .virsh(&["list", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// sha256 of a file, streamed.
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// XML text escaping for attribute values and text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The value of `attr='...'` (or `"..."`) in the first element `<tag ...>` of `xml`.
pub fn attr(xml: &str, tag: &str, attr: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag} "))?;
    let el = &xml[start..start + xml[start..].find('>')?];
    for q in ['\'', '"'] {
        let key = format!(" {attr}={q}");
        if let Some(i) = el.find(&key) {
            let v = &el[i + key.len()..];
            return Some(unesc(&v[..v.find(q)?]));
        }
    }
    None
}

fn unesc(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The forwarded `host:port` in a domain's `hostfwd=tcp:HOST:PORT-:GUEST`.
pub fn forwarded(xml: &str) -> Option<String> {
    let rest = &xml[xml.find("hostfwd=tcp:")? + "hostfwd=tcp:".len()..];
    let end = rest.find("-:")?;
    Some(rest[..end].to_string())
}

/// Everything a domain's XML is made from.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub env: &'a str,
    pub digest: &'a str,
    pub memory_mib: u32,
    pub volume_path: &'a Path,
    pub code: &'a Path,
    pub vars_template: &'a Path,
    pub nvram: &'a Path,
    pub console: &'a Path,
    pub config: Option<&'a Path>,
    pub forward: (&'a str, u16, u16),
}

/// The domain XML of one server. Pure.
pub fn domain_xml(d: &DomainSpec) -> String {
    let (host, port, guest) = d.forward;
    let fwcfg = match d.config {
        Some(c) => format!(
            "  <sysinfo type='fwcfg'>\n    <entry name='opt/fuse/env' file='{}'/>\n  </sysinfo>\n",
            esc(&c.to_string_lossy())
        ),
        None => String::new(),
    };
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <metadata>
    <fuse:server xmlns:fuse='{ns}' env='{env}' digest='{digest}'/>
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
{fwcfg}  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>{code}</loader>
    <nvram template='{vars}'>{nvram}</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{vol}'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=fusenet0,hostfwd=tcp:{host}:{port}-:{guest}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=fusenet0,bus=pcie.0,addr={slot}'/>
  </qemu:commandline>
</domain>
",
        name = esc(d.name),
        ns = META_NS,
        env = esc(d.env),
        digest = esc(d.digest),
        mem = d.memory_mib,
        code = esc(&d.code.to_string_lossy()),
        vars = esc(&d.vars_template.to_string_lossy()),
        nvram = esc(&d.nvram.to_string_lossy()),
        vol = esc(&d.volume_path.to_string_lossy()),
        console = esc(&d.console.to_string_lossy()),
        host = host,
        slot = NIC_SLOT,
    )
}

impl Target for Libvirt {
    fn check(&mut self) -> Result<()> {
        self.virsh(&["version"]).with_context(|| {
            format!(
                "libvirt at {} is not reachable (is libvirtd running? `libvirtd -d` as root)",
                self.uri
            )
        })?;
        crate::vm::ovmf()?;
        Ok(())
    }

    fn put_image(&mut self, img: &Image, _parent: Option<&Image>) -> Result<Upload> {
        anyhow::ensure!(
            img.meta.arch == crate::arch::Arch::Amd64,
            "the libvirt target runs amd64 images (q35 + OVMF); {} is {}: deploy it to an aws \
             environment with an arm64 instance type, or run it with `fuse run`",
            img.digest,
            img.meta.arch
        );
        self.ensure_pool()?;
        let vol = Self::volume_name(img);
        let size = std::fs::metadata(&img.path)
            .with_context(|| format!("cannot read {}", img.path.display()))?
            .len();
        let blocks = size.div_ceil(4096);
        if self.ok(&["vol-info", "--pool", &self.pool, &vol]) {
            let have = self.volume_digest(&vol)?;
            if have == img.digest {
                tracing::info!("volume {vol} in pool {} is present and verified", self.pool);
                return Ok(Upload {
                    reused: true,
                    blocks_total: blocks,
                    skipped_unchanged: blocks,
                    ..Upload::default()
                });
            }
            tracing::warn!(
                "volume {vol} in pool {} holds {have}, not {}: uploading it again",
                self.pool,
                img.digest
            );
            self.virsh(&["vol-delete", "--pool", &self.pool, &vol])?;
        }
        let path = img.path.to_string_lossy().into_owned();
        self.virsh(&[
            "vol-create-as",
            &self.pool,
            &vol,
            &size.to_string(),
            "--format",
            "raw",
        ])?;
        let up = self
            .virsh(&["vol-upload", "--pool", &self.pool, &vol, &path])
            .and_then(|_| self.volume_digest(&vol));
        match up {
            Ok(d) if d == img.digest => {}
            Ok(d) => {
                let _ = self.virsh(&["vol-delete", "--pool", &self.pool, &vol]);
                bail!(
                    "volume {vol} holds {d} after the upload, not {}",
                    img.digest
                );
            }
            Err(e) => {
                let _ = self.virsh(&["vol-delete", "--pool", &self.pool, &vol]);
                return Err(e);
            }
        }
        Ok(Upload {
            reused: false,
            blocks_total: blocks,
            blocks_sent: blocks,
            bytes_sent: size,
            ..Upload::default()
        })
    }

    fn start(&mut self, img: &Image, spec: &ServerSpec) -> Result<Server> {
        let vol = Self::volume_name(img);
        let volume_path = PathBuf::from(
            self.virsh(&["vol-path", "--pool", &self.pool, &vol])?
                .trim(),
        );
        let (code, vars) = crate::vm::ovmf()?;
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("cannot create {}", self.state_dir.display()))?;
        crate::util::fs::set_mode(&self.state_dir, 0o755)?;
        let console = self.state_file(&spec.name, "console");
        let nvram = self.state_file(&spec.name, "vars.fd");
        let _ = std::fs::remove_file(&console);
        let _ = std::fs::remove_file(&nvram);
        // An environment without config gets an empty one: the init then knows there is
        // none instead of searching the server's disks for a config disk (docs/config.md).
        let config = {
            let p = self.state_file(&spec.name, "env");
            write_atomic(&p, spec.config.unwrap_or_default())?;
            crate::util::fs::set_mode(&p, 0o644)?;
            Some(p)
        };
        let port = crate::vm::free_port_on(&self.forward)?;
        let xml = domain_xml(&DomainSpec {
            name: &spec.name,
            env: spec.env,
            digest: &img.digest,
            memory_mib: self.memory,
            volume_path: &volume_path,
            code: &code,
            vars_template: &vars,
            nvram: &nvram,
            console: &console,
            config: config.as_deref(),
            forward: (&self.forward, port, img.meta.app.port),
        });
        let xml_file = self.state_file(&spec.name, "xml");
        write_atomic(&xml_file, xml.as_bytes())?;
        self.virsh(&["create", &xml_file.to_string_lossy()])
            .with_context(|| format!("cannot start server {}", spec.name))?;
        tracing::info!(
            "started {} (app port {} on {}:{port})",
            spec.name,
            img.meta.app.port,
            self.forward
        );
        Ok(Server {
            name: spec.name.clone(),
            id: spec.name.clone(),
            digest: img.digest.clone(),
            address: Some(format!("{}:{port}", self.forward)),
        })
    }

    fn console(&mut self, s: &Server) -> Result<String> {
        let p = self.state_file(&s.id, "console");
        match std::fs::read(&p) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn address(&mut self, s: &Server) -> Result<Option<String>> {
        if s.address.is_some() {
            return Ok(s.address.clone());
        }
        Ok(self
            .virsh(&["dumpxml", &s.id])
            .ok()
            .and_then(|x| forwarded(&x)))
    }

    fn stop(&mut self, s: &Server) -> Result<()> {
        if self.ok(&["domstate", &s.id]) {
            let o = self.virsh_out(&["destroy", &s.id])?;
            if !o.status.success() && self.ok(&["domstate", &s.id]) {
                bail!(
                    "cannot destroy {}: {}",
                    s.id,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        for ext in ["vars.fd", "env", "xml"] {
            let _ = std::fs::remove_file(self.state_file(&s.id, ext));
        }
        Ok(())
    }

    fn servers(&mut self, env: &str) -> Result<Vec<Server>> {
        let mut out = Vec::new();
        for name in self
            .domains()?
            .into_iter()
            .filter(|n| n.starts_with("fuse-"))
        {
            let Ok(xml) = self.virsh(&["dumpxml", &name]) else {
                continue; // gone meanwhile
            };
            if attr(&xml, "fuse:server", "env").as_deref() != Some(env) {
                continue;
            }
            out.push(Server {
                id: name.clone(),
                name,
                digest: attr(&xml, "fuse:server", "digest").unwrap_or_default(),
                address: forwarded(&xml),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_round_trips_what_servers_reads() {
        let x = domain_xml(&DomainSpec {
            name: "fuse-test-hello-abc-1",
            env: "test",
            digest: "sha256:abc",
            memory_mib: 512,
            volume_path: Path::new("/p/v.img"),
            code: Path::new("/c"),
            vars_template: Path::new("/v"),
            nvram: Path::new("/n"),
            console: Path::new("/con"),
            config: Some(Path::new("/e'nv")),
            forward: ("127.0.0.1", 4000, 8080),
        });
        assert_eq!(attr(&x, "fuse:server", "env").as_deref(), Some("test"));
        assert_eq!(
            attr(&x, "fuse:server", "digest").as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(attr(&x, "entry", "file").as_deref(), Some("/e'nv"));
        assert_eq!(forwarded(&x).as_deref(), Some("127.0.0.1:4000"));
        assert!(x.contains("<domain type='qemu'"));
    }
}
