//! Deploy: an environment's servers replaced blue-green by servers of one image digest. The
//! flow is written once over two small traits, a [`Target`] (where servers run: libvirt,
//! AWS) and a [`Switch`] (what sends them traffic: HAProxy, a target group):
//!
//! order check -> put image (once per digest) -> start `instances` servers side by side ->
//! identity gate -> health gate -> switch (add new, drain old, remove old) -> retire old ->
//! ledger. A failure before the switch destroys the new servers and leaves the old ones
//! serving; a gate failure is [`GateFailed`] (exit 5). See docs/deploy.md.

pub mod aws;
pub mod gates;
pub mod haproxy;
pub mod libvirt;
pub mod model;

use crate::envs::EnvSpec;
use crate::image_store::{lock_file, now_unix};
use crate::ledger::{self, Deployment, Entry, Project, Step};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use model::{short, tail, GateFailed, Image, Server, ServerSpec, Switch, Target, Upload};

/// The target and switch of an environment.
pub fn connect(env: &EnvSpec) -> Result<(Box<dyn Target>, Box<dyn Switch>)> {
    match env.target.as_str() {
        "libvirt" => {
            let h = env.haproxy.clone().with_context(|| {
                format!(
                    "environment {}: [env.{}.haproxy] is missing",
                    env.name, env.name
                )
            })?;
            Ok((
                Box::new(libvirt::Libvirt::new(&env.libvirt)),
                Box::new(haproxy::Haproxy::new(h)),
            ))
        }
        "aws" => {
            let t = env.aws.clone().with_context(|| {
                format!(
                    "environment {}: [env.{}.aws] is missing",
                    env.name, env.name
                )
            })?;
            let spec = aws::AwsSpec::from_table(&env.name, &t)?;
            Ok((
                Box::new(aws::ec2::Ec2::new(&env.name, spec.clone())),
                Box::new(aws::ec2::TargetGroup::new(&env.name, &spec)),
            ))
        }
        other => bail!(
            "environment {}: target {other:?} is not available in this build",
            env.name
        ),
    }
}

/// `deploy` or `rollback`, and who asked.
pub struct Request<'a> {
    pub kind: &'a str,
    pub who: &'a str,
}

/// The servers an environment runs now: those of its current deployment that the target
/// still runs; every other server the target runs for the environment is a leftover of an
/// interrupted deployment (returned second).
pub fn current_servers(
    history: &[Entry],
    image: &str,
    env: &str,
    running: Vec<Server>,
) -> (Vec<Server>, Vec<Server>) {
    let current: Vec<&Server> = ledger::current(history)
        .get(&(image.to_string(), env.to_string()))
        .and_then(|e| e.deploy.as_ref())
        .map(|d| d.servers.iter().collect())
        .unwrap_or_default();
    running
        .into_iter()
        .partition(|s| current.iter().any(|c| c.id == s.id || c.name == s.name))
}

/// Removes leftovers of interrupted deployments (servers the ledger does not name as the
/// environment's current ones): out of the switch, then stopped. Returns their names.
pub fn reconcile(
    history: &[Entry],
    image: Option<&str>,
    env: &str,
    target: &mut dyn Target,
    switch: &mut dyn Switch,
) -> Result<Vec<String>> {
    let running = target.servers(env)?;
    let current: Vec<&Server> = ledger::current(history)
        .iter()
        .filter(|((i, e), _)| e == env && image.is_none_or(|x| x == i))
        .filter_map(|(_, x)| x.deploy.as_ref())
        .flat_map(|d| d.servers.iter())
        .collect();
    let mut removed = Vec::new();
    for s in running {
        if current.iter().any(|c| c.id == s.id || c.name == s.name) {
            continue;
        }
        tracing::warn!(
            "{}: a leftover of an interrupted deployment to {env}; removing it",
            s.name
        );
        switch.remove(&s)?;
        target.stop(&s)?;
        removed.push(s.name);
    }
    Ok(removed)
}

/// Records the steps of one deployment.
struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = ledger::rfc3339(now_unix());
        let t = Instant::now();
        tracing::info!("{name}");
        let r = f();
        self.steps.push(Step {
            step: name.to_string(),
            started,
            ms: t.elapsed().as_millis() as u64,
            ok: r.is_ok(),
        });
        r
    }
}

/// Deploys `img` to `env`: the whole flow (module docs). Takes the environment's deploy
/// lock for its duration. Returns the ledger entry of a successful deployment; a failure
/// after the order check is recorded in the ledger too and returned as the error
/// ([`GateFailed`] for a gate).
pub fn deploy(
    project: &Project,
    env: &EnvSpec,
    img: &Image,
    req: &Request,
    target: &mut dyn Target,
    switch: &mut dyn Switch,
) -> Result<Entry> {
    let config = match &env.config {
        Some(f) => {
            let data =
                std::fs::read(f).with_context(|| format!("cannot read config {}", f.display()))?;
            crate::envfile::check(&data).with_context(|| format!("{}", f.display()))?;
            Some(data)
        }
        None => None,
    };
    let config_digest = config
        .as_ref()
        .map(|d| format!("sha256:{}", crate::digest::sha256_hex(d)));
    let lock_path = {
        let mut s = project.ledger.as_os_str().to_owned();
        s.push(format!(".deploy-{}.lock", env.name));
        PathBuf::from(s)
    };
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _lock = lock_file(&lock_path)?;
    let history = ledger::read(&project.ledger)?;
    let from = ledger::check_promotion(
        &history,
        &project.order,
        &img.meta.name,
        &env.name,
        &img.digest,
    )?;
    // Reachable, usable, the backend exists: before anything starts.
    target
        .check()
        .with_context(|| format!("environment {}: target {}", env.name, env.target))?;
    switch
        .check()
        .with_context(|| format!("environment {}: its traffic switch", env.name))?;
    let removed = reconcile(&history, Some(&img.meta.name), &env.name, target, switch)?;
    if !removed.is_empty() {
        tracing::info!("removed leftovers: {}", removed.join(", "));
    }
    let (old, _) = current_servers(
        &history,
        &img.meta.name,
        &env.name,
        target.servers(&env.name)?,
    );
    let parent = ledger::current(&history)
        .get(&(img.meta.name.clone(), env.name.clone()))
        .and_then(|e| Image::open(&e.digest).ok());

    let mut steps = Steps { steps: vec![] };
    let mut new: Vec<Server> = Vec::new();
    let mut upload = None;
    let result = (|| -> Result<()> {
        upload = Some(steps.run("put image", || target.put_image(img, parent.as_ref()))?);
        let token = format!("{:x}", now_unix() % 0x100_0000);
        steps.run("start servers", || {
            for i in 1..=env.instances {
                let spec = ServerSpec {
                    env: &env.name,
                    name: server_name(&env.name, &img.meta.name, img.short(), &token, i),
                    config: config.as_deref(),
                };
                new.push(target.start(img, &spec)?);
            }
            Ok(())
        })?;
        if env.identity_gate {
            steps.run("identity gate", || {
                gates::identity(target, &new, img, env.health_timeout)
            })?;
        }
        if target.health_by_switch() {
            steps.run("switch: add new", || {
                new.iter().try_for_each(|s| switch.add(s))
            })?;
            steps.run("health gate", || {
                gates::switch_health(target, switch, &new, env.health_timeout)
            })?;
        } else {
            steps.run("health gate", || {
                gates::http_health(target, &mut new, img, env.health_timeout)
            })?;
            steps.run("switch: add new", || {
                new.iter().try_for_each(|s| switch.add(s))
            })?;
            steps.run("switch: new healthy", || {
                gates::switch_health(target, switch, &new, env.health_timeout)
            })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Before the switch moved anything away from the old servers: take the new ones out
        // and destroy them; the old ones keep serving.
        for s in &new {
            if let Err(x) = switch.remove(s) {
                tracing::warn!("cannot remove {} from the switch: {x:#}", s.name);
            }
            if let Err(x) = target.stop(s) {
                tracing::warn!("cannot stop {}: {x:#}", s.name);
            }
        }
        let entry = entry(
            img,
            env,
            req,
            from,
            config_digest,
            Deployment {
                target: env.target.clone(),
                kind: req.kind.to_string(),
                result: "failed".into(),
                error: Some(format!("{e:#}")),
                identity_gate: env.identity_gate,
                servers: new,
                retired: vec![],
                steps: steps.steps,
                upload,
            },
        );
        ledger::append(&project.ledger, |_| Ok(entry.clone()))?;
        return Err(e);
    }
    // The new servers take traffic; the old ones finish theirs and go.
    steps.run("switch: drain old", || {
        for s in &old {
            switch.drain(s)?;
        }
        let deadline = Instant::now() + env.drain;
        while Instant::now() < deadline {
            let mut open = 0;
            for s in &old {
                open += switch.sessions(s).unwrap_or(0);
            }
            if open == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    })?;
    steps.run("switch: remove old", || {
        old.iter().try_for_each(|s| switch.remove(s))
    })?;
    steps.run("retire old", || old.iter().try_for_each(|s| target.stop(s)))?;
    let entry = entry(
        img,
        env,
        req,
        from,
        config_digest,
        Deployment {
            target: env.target.clone(),
            kind: req.kind.to_string(),
            result: "ok".into(),
            error: None,
            identity_gate: env.identity_gate,
            servers: new,
            retired: old,
            steps: steps.steps,
            upload,
        },
    );
    ledger::append(&project.ledger, |_| Ok(entry.clone()))
}

fn entry(
    img: &Image,
    env: &EnvSpec,
    req: &Request,
    from: Option<String>,
    config: Option<String>,
    d: Deployment,
) -> Entry {
    Entry {
        time: ledger::rfc3339(now_unix()),
        who: req.who.to_string(),
        image: img.meta.name.clone(),
        version: img.meta.version.clone(),
        env: env.name.clone(),
        digest: img.digest.clone(),
        from,
        config,
        registry: None,
        signer: None,
        deploy: Some(d),
    }
}

/// `fuse-ENV-IMAGE-DIGEST12-TOKEN-N`, cut to 63 characters from the image name.
pub fn server_name(env: &str, image: &str, short: &str, token: &str, i: u32) -> String {
    let fixed = format!("fuse-{env}--{short}-{token}-{i}");
    let room = 63usize.saturating_sub(fixed.len());
    let image: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(room.max(1))
        .collect();
    format!("fuse-{env}-{image}-{short}-{token}-{i}")
}

/// The digest ENV ran before its current one (for `fuse rollback`), or the one named,
/// which must have run there successfully.
pub fn rollback_digest(
    history: &[Entry],
    image: Option<&str>,
    env: &str,
    to: Option<&str>,
) -> Result<(String, String)> {
    let ran: Vec<&Entry> = history
        .iter()
        .filter(|e| e.env == env && e.counts() && image.is_none_or(|i| e.image == i))
        .collect();
    let images: std::collections::BTreeSet<&str> = ran.iter().map(|e| e.image.as_str()).collect();
    if images.len() > 1 {
        bail!(
            "environment {env} runs several images ({}): name one with --image",
            images.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let Some(cur) = ran.last() else {
        bail!("environment {env} has no deployment to roll back");
    };
    if let Some(to) = to {
        let want = to.strip_prefix("sha256:").unwrap_or(to);
        let hit = |e: &&&Entry| {
            let have = e.digest.strip_prefix("sha256:").unwrap_or(&e.digest);
            want.len() >= 12 && have.starts_with(want)
        };
        return match ran.iter().rev().find(hit) {
            Some(e) => Ok((e.image.clone(), e.digest.clone())),
            None => bail!("{to} never ran in {env}: rollback goes only to a digest that did"),
        };
    }
    match ran.iter().rev().find(|e| e.digest != cur.digest) {
        Some(e) => Ok((e.image.clone(), e.digest.clone())),
        None => bail!(
            "environment {env} has run only {} ({}): nothing to roll back to",
            cur.digest,
            cur.version
        ),
    }
}
