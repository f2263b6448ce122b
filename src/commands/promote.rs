//! `fuse promote IMAGE ENV` and `fuse envs`: which digest each environment runs, recorded in
//! the append-only ledger, with the promotion order of the project's fuse-envs.toml enforced.

use crate::cli::{EnvsArgs, PromoteArgs};
use crate::digest::sha256_hex;
use crate::image_store::{default_data_dir, now_unix, resolve_image_ref};
use crate::ledger::{self, Entry};
use crate::oci::{self, Reference};
use crate::util::table::print_table;
use crate::{disk, envfile};
use anyhow::{bail, Context, Result};

pub fn promote(args: &PromoteArgs) -> Result<u8> {
    ledger::check_env(&args.env)?;
    let path = resolve_image_ref(&args.image)?;
    let disk =
        std::fs::read(&path).with_context(|| format!("cannot read image {}", path.display()))?;
    let meta = disk::read_meta(&disk)
        .with_context(|| format!("{} is not a fuse image", path.display()))?;
    let digest = format!("sha256:{}", sha256_hex(&disk));
    let signer = signer_of(&disk, meta.arch).with_context(|| format!("{}", path.display()))?;
    let config = match &args.config {
        Some(f) => {
            let data =
                std::fs::read(f).with_context(|| format!("cannot read config {}", f.display()))?;
            envfile::check(&data).with_context(|| format!("{}", f.display()))?;
            Some(format!("sha256:{}", sha256_hex(&data)))
        }
        None => None,
    };
    let project = ledger::load_project(args.envs.as_deref(), &default_data_dir()?)?;
    if let Some(e) = project.env(&args.env) {
        bail!(
            "environment {} has a target ({}): use `fuse deploy {} {}`, which starts its \
             servers and records the deployment",
            e.name,
            e.target,
            args.image,
            e.name
        );
    }
    let who = ledger::who(args.who.as_deref());
    // The registry's manifest is found (read-only) before the ledger line is written; the
    // tag moves only after the line is on disk, so the ledger never misses a tag move.
    let pending: std::cell::RefCell<Option<TagMove>> = std::cell::RefCell::new(None);
    let entry = ledger::append_then(
        &project.ledger,
        |history| {
            let from =
                ledger::check_promotion(history, &project.order, &meta.name, &args.env, &digest)?;
            let registry = match &args.registry {
                Some(r) => {
                    let t = find_in_registry(r, args, &disk)?;
                    let shown = t.shown.clone();
                    *pending.borrow_mut() = Some(t);
                    Some(shown)
                }
                None => None,
            };
            Ok(Entry {
                time: ledger::rfc3339(now_unix()),
                who: who.clone(),
                image: meta.name.clone(),
                version: meta.version.clone(),
                env: args.env.clone(),
                digest: digest.clone(),
                from,
                config: config.clone(),
                registry,
                signer: signer.clone(),
                deploy: None,
            })
        },
        |_| match pending.borrow_mut().take() {
            Some(t) => t.client.put_manifest(&t.tag, &t.manifest).map(|_| ()),
            None => Ok(()),
        },
    )?;
    tracing::info!("ledger {}", project.ledger.display());
    println!(
        "promoted {} {} {} to {}{}{}",
        entry.image,
        entry.version,
        entry.digest,
        entry.env,
        entry
            .from
            .as_deref()
            .map(|f| format!(" (from {f})"))
            .unwrap_or_default(),
        entry
            .registry
            .as_deref()
            .map(|r| format!("; tagged {r}"))
            .unwrap_or_default()
    );
    if let Some(s) = &entry.signer {
        tracing::info!("signed by the certificate {s}");
    }
    Ok(0)
}

/// The fingerprint of the certificate that signed the image's UKI, verified against the
/// UKI's bytes; None when unsigned. A signature that does not verify is an error.
fn signer_of(disk: &[u8], arch: crate::arch::Arch) -> Result<Option<String>> {
    let uki = disk::read_esp_file(disk, arch.esp_boot_path())?;
    let sigs = crate::sign::verify_pe(&uki).context("cannot read the UKI's signature")?;
    match sigs.first() {
        None => Ok(None),
        Some(s) if s.problems.is_empty() => Ok(Some(format!("sha256:{}", s.signer.fingerprint))),
        Some(s) => bail!(
            "the UKI's signature by {} does not verify: {}",
            s.signer.subject,
            s.problems.join("; ")
        ),
    }
}

/// A registry tag to point at a manifest: the manifest's bytes are put back under the tag
/// (no blob is sent).
struct TagMove {
    client: oci::client::Client,
    tag: String,
    manifest: Vec<u8>,
    /// `host/repo:tag@sha256:<manifest>`, as the ledger records it.
    shown: String,
}

/// Finds the manifest this image was pushed as, by its digest (chunked or whole; both are
/// pure functions of the image), for the tag (REF's, else the environment's name).
fn find_in_registry(reference: &str, args: &PromoteArgs, disk: &[u8]) -> Result<TagMove> {
    let r = Reference::parse(reference)?;
    let tag = r.tag.clone().unwrap_or_else(|| args.env.clone());
    let r = r.with_tag(&tag);
    let c = crate::oci::client::connect(&r, args.reg.insecure, args.reg.username.as_deref(), true)?;
    for whole in [false, true] {
        let art = oci::artifact(disk, whole)?;
        // As this fuse pushes it, then as a fuse before the arch annotation did.
        for digest in [art.manifest_digest.clone(), art.manifest_without_arch()?.1] {
            if c.manifest_exists(&digest)? {
                let bytes = c.get_manifest(&digest)?;
                if sha256_hex(&bytes) != digest["sha256:".len()..] {
                    bail!("the registry's manifest {digest} does not match its digest");
                }
                return Ok(TagMove {
                    shown: format!("{r}@{digest}"),
                    client: c,
                    tag,
                    manifest: bytes,
                });
            }
        }
    }
    bail!(
        "{} is not in {}/{}: push it first (fuse push IMAGE {}/{})",
        args.image,
        r.registry,
        r.repository,
        r.registry,
        r.repository
    )
}

pub fn envs(args: &EnvsArgs) -> Result<u8> {
    let project = ledger::load_project(args.envs.as_deref(), &default_data_dir()?)?;
    let all = ledger::read(&project.ledger)?;
    let history: Vec<&Entry> = all
        .iter()
        .filter(|e| args.image.as_deref().is_none_or(|i| e.image == i))
        .collect();
    let current = ledger::current(&all);
    let rank = |env: &str| {
        project
            .order
            .iter()
            .position(|e| e == env)
            .unwrap_or(usize::MAX)
    };
    let mut cur: Vec<&Entry> = current
        .values()
        .copied()
        .filter(|e| args.image.as_deref().is_none_or(|i| e.image == i))
        .collect();
    cur.sort_by(|a, b| (&a.image, rank(&a.env), &a.env).cmp(&(&b.image, rank(&b.env), &b.env)));
    let servers = env_servers(&project, &all);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ledger": project.ledger,
                "order": project.order,
                "current": cur,
                "servers": servers,
                "history": history,
            }))?
        );
        return Ok(0);
    }
    if !project.order.is_empty() {
        println!("order: {}", project.order.join(" -> "));
    }
    let rows: Vec<[String; 6]> = cur
        .iter()
        .map(|e| {
            [
                e.image.clone(),
                e.env.clone(),
                e.version.clone(),
                e.digest.clone(),
                e.time.clone(),
                e.who.clone(),
            ]
        })
        .collect();
    print_table(&["IMAGE", "ENV", "VERSION", "DIGEST", "SINCE", "BY"], &rows);
    for (env, list) in &servers {
        println!();
        println!("servers of {env}:");
        let rows: Vec<[String; 4]> = list
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    s.address.clone().unwrap_or_else(|| "-".into()),
                    s.health.clone(),
                    s.digest.clone(),
                ]
            })
            .collect();
        print_table(&["NAME", "ADDRESS", "HEALTH", "DIGEST"], &rows);
    }
    println!();
    println!("history ({}):", project.ledger.display());
    for e in history {
        let mut line = format!(
            "{} {} {} {} -> {} {}",
            e.time, e.who, e.image, e.version, e.env, e.digest
        );
        if let Some(f) = &e.from {
            line.push_str(&format!(" from {f}"));
        }
        if let Some(c) = &e.config {
            line.push_str(&format!(" config {c}"));
        }
        if let Some(r) = &e.registry {
            line.push_str(&format!(" registry {r}"));
        }
        if let Some(d) = &e.deploy {
            line.push_str(&format!(
                " {} {} ({} servers)",
                d.kind,
                d.result,
                d.servers.len()
            ));
            if let Some(err) = &d.error {
                line.push_str(&format!(": {}", err.lines().next().unwrap_or("")));
            }
        }
        println!("{line}");
    }
    Ok(0)
}

/// One server of an environment as `fuse envs` shows it.
#[derive(serde::Serialize)]
struct ServerView {
    name: String,
    address: Option<String>,
    /// `healthy`, `unhealthy` (no answer to the image's [health]) or `unknown`.
    health: String,
    digest: String,
}

/// The servers of every environment with a target (leftovers of interrupted deployments are
/// removed first, see [`crate::deploy::reconcile`]); an unreachable target is reported and
/// skipped.
fn env_servers(
    project: &ledger::Project,
    all: &[Entry],
) -> std::collections::BTreeMap<String, Vec<ServerView>> {
    let mut out = std::collections::BTreeMap::new();
    for env in &project.envs {
        let listed = (|| -> Result<Vec<ServerView>> {
            let (mut target, mut switch) = crate::deploy::connect(env)?;
            target.check()?;
            // A running deployment's new servers are not leftovers: reconcile only while
            // no deployment to this environment holds its lock.
            match crate::deploy::lock(project, &env.name, false) {
                Ok(Some(_lock)) if switch.check().is_ok() => {
                    crate::deploy::reconcile(
                        all,
                        &env.name,
                        env.health_timeout,
                        target.as_mut(),
                        switch.as_mut(),
                    )?;
                }
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(
                    "environment {}: a deployment is running; its servers are listed as they are",
                    env.name
                ),
                Err(e) => tracing::warn!("environment {}: leftovers not checked: {e:#}", env.name),
            }
            let mut v = vec![];
            for s in target.servers(&env.name)? {
                let address = target.address(&s)?;
                let path = crate::deploy::Image::open(&s.digest)
                    .ok()
                    .and_then(|i| i.meta.app.health_http);
                let health = match (&address, path) {
                    (Some(a), Some(p)) => {
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .timeout_global(Some(std::time::Duration::from_secs(3)))
                            .http_status_as_error(false)
                            .build()
                            .into();
                        match agent.get(format!("http://{a}{p}")).call() {
                            Ok(r) if r.status().is_success() => "healthy",
                            _ => "unhealthy",
                        }
                    }
                    _ => "unknown",
                };
                v.push(ServerView {
                    name: s.name,
                    address,
                    health: health.into(),
                    digest: s.digest,
                });
            }
            Ok(v)
        })();
        match listed {
            Ok(v) => {
                out.insert(env.name.clone(), v);
            }
            Err(e) => tracing::warn!("environment {}: cannot list its servers: {e:#}", env.name),
        }
    }
    out
}
