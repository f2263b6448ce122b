//! Deploy: an environment's servers replaced blue-green by servers of one image digest. The
//! flow is written once over two small traits, a [`Target`] (where servers run: libvirt,
//! AWS) and a [`Switch`] (what sends them traffic: HAProxy, a target group):
//!
//! order check -> leftovers reconciled -> put image (once per digest) -> start `instances`
//! servers side by side -> identity gate -> health gate -> switch (add new, drain old,
//! remove old) -> ledger -> retire old. A failure before the ledger line puts the old
//! servers back where the switch had moved them and destroys the new ones; a gate failure
//! is [`GateFailed`] (exit 5). Killed at any step ([`crate::util::fault`] points
//! `deploy:*`), the next deploy or `fuse envs` ([`reconcile`]) does the same, or removes
//! the old servers once the ledger names the new ones. See docs/deploy.md.

pub mod aws;
pub mod gates;
pub mod haproxy;
pub mod libvirt;
pub mod model;

use crate::envs::EnvSpec;
use crate::image_store::{lock_file, now_unix, try_lock_file};
use crate::ledger::{self, Deployment, Entry, Project, Step};
use crate::util::fault::pause;
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

/// What [`reconcile`] found and did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The ledger's current servers of the environment (every image) that the target runs.
    pub current: Vec<Server>,
    /// Current servers found drained or out of the switch (a deployment killed while it
    /// moved traffic) and put back before any leftover was taken out.
    pub restored: Vec<String>,
    /// Leftovers taken out of the switch and stopped.
    pub removed: Vec<String>,
    /// Leftovers kept because they carry the traffic and no current server does (the
    /// recorded servers are gone): removing them would stop the environment serving. The
    /// next deployment drains and retires them like current ones.
    pub kept: Vec<Server>,
}

/// Puts an environment back into the state its ledger records, without ever taking away
/// the servers that carry its traffic: every server the target runs for `env` that the
/// ledger does not name as a current one (of any image) is a leftover of an interrupted
/// deployment. When there are leftovers, the current servers are first put back into the
/// switch where they are not serving (drained or removed by a deployment killed after its
/// switch), waiting up to `settle` for one of them to be healthy there; then each leftover
/// is taken out of the switch and stopped, except one the switch sends traffic to while no
/// current server serves (kept, see [`Reconciled::kept`]). Run under the environment's
/// deploy lock ([`lock`]): a running deployment's new servers are not leftovers.
pub fn reconcile(
    history: &[Entry],
    env: &str,
    settle: Duration,
    target: &mut dyn Target,
    switch: &mut dyn Switch,
) -> Result<Reconciled> {
    let recorded: Vec<&Server> = ledger::current(history)
        .iter()
        .filter(|((_, e), _)| e == env)
        .filter_map(|(_, x)| x.deploy.as_ref())
        .flat_map(|d| d.servers.iter())
        .collect();
    let (current, left): (Vec<Server>, Vec<Server>) = target
        .servers(env)?
        .into_iter()
        .partition(|s| recorded.iter().any(|c| c.id == s.id || c.name == s.name));
    let mut out = Reconciled {
        current,
        ..Reconciled::default()
    };
    if left.is_empty() {
        return Ok(out);
    }
    for s in &out.current {
        if !switch.healthy(s)? {
            tracing::warn!(
                "{}: a current server of {env} is not serving in the switch (an interrupted \
                 deployment drained or removed it); putting it back",
                s.name
            );
            switch.add(s)?;
            out.restored.push(s.name.clone());
        }
    }
    let deadline = Instant::now() + settle;
    let current_serves = !out.current.is_empty()
        && loop {
            let mut any = false;
            for s in &out.current {
                any |= switch.healthy(s)?;
            }
            if any || Instant::now() >= deadline {
                break any;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
    for s in left {
        if !current_serves && switch.healthy(&s)? {
            tracing::warn!(
                "{}: not recorded as a server of {env}, but it carries the traffic and no \
                 recorded server does: kept (the next `fuse deploy` to {env} replaces it)",
                s.name
            );
            out.kept.push(s);
            continue;
        }
        tracing::warn!(
            "{}: a leftover of an interrupted deployment to {env}; removing it",
            s.name
        );
        switch.remove(&s)?;
        target.stop(&s)?;
        out.removed.push(s.name);
    }
    Ok(out)
}

/// The deploy lock of `env` (`LEDGER.deploy-ENV.lock`): held by a deployment for its whole
/// run; `wait` false: None when a deployment holds it.
pub fn lock(project: &Project, env: &str, wait: bool) -> Result<Option<crate::image_store::Lock>> {
    let mut s = project.ledger.as_os_str().to_owned();
    s.push(format!(".deploy-{env}.lock"));
    let path = PathBuf::from(s);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if wait {
        lock_file(&path).map(Some)
    } else {
        try_lock_file(&path)
    }
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
    let _lock = lock(project, &env.name, true)?;
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
    let rec = reconcile(&history, &env.name, env.health_timeout, target, switch)?;
    if !rec.removed.is_empty() {
        tracing::info!("removed leftovers: {}", rec.removed.join(", "));
    }
    // The servers this deployment replaces: the image's current ones, and leftovers that
    // carry the traffic in their place.
    let (mut old, _) = current_servers(&history, &img.meta.name, &env.name, rec.current);
    old.extend(rec.kept);
    let parent = ledger::current(&history)
        .get(&(img.meta.name.clone(), env.name.clone()))
        .and_then(|e| Image::open(&e.digest).ok());

    let mut steps = Steps { steps: vec![] };
    let mut new: Vec<Server> = Vec::new();
    let mut upload = None;
    let result = (|| -> Result<()> {
        upload = Some(steps.run("put image", || target.put_image(img, parent.as_ref()))?);
        pause("deploy:image-put");
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
        pause("deploy:servers-started");
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
            pause("deploy:healthy");
            steps.run("switch: add new", || {
                new.iter().try_for_each(|s| switch.add(s))
            })?;
            steps.run("switch: new healthy", || {
                gates::switch_health(target, switch, &new, env.health_timeout)
            })?;
        }
        pause("deploy:switched");
        // The new servers take traffic; the old ones finish theirs and leave the switch.
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
        pause("deploy:drained");
        steps.run("switch: remove old", || {
            old.iter().try_for_each(|s| switch.remove(s))
        })?;
        pause("deploy:removed");
        Ok(())
    })();
    if let Err(e) = result {
        // The old servers serve again (a failure while draining them put them back), then
        // the new ones are taken out and destroyed.
        for s in &old {
            let back = switch
                .healthy(s)
                .and_then(|ok| if ok { Ok(()) } else { switch.add(s) });
            if let Err(x) = back {
                tracing::warn!("cannot put {} back into the switch: {x:#}", s.name);
            }
        }
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
    // Only the new servers are in the switch: the deployment is done, recorded before the
    // old servers are destroyed. Killed from here on, the old ones are leftovers that the
    // next `fuse deploy` or `fuse envs` removes; killed before, the old ones are current
    // and are put back.
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
            retired: old.clone(),
            steps: steps.steps,
            upload,
        },
    );
    let entry = ledger::append(&project.ledger, |_| Ok(entry.clone()))?;
    pause("deploy:recorded");
    for s in &old {
        if let Err(e) = target.stop(s) {
            tracing::warn!(
                "cannot retire {}: {e:#} (the next `fuse deploy` or `fuse envs` removes it)",
                s.name
            );
        }
    }
    Ok(entry)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    type Log = Rc<RefCell<Vec<String>>>;

    /// Runs `servers`; `stop` removes one.
    struct FakeTarget {
        running: Vec<Server>,
        log: Log,
    }

    /// The backend: server name -> ready (true) or draining (false).
    struct FakeSwitch {
        backend: BTreeMap<String, bool>,
        log: Log,
    }

    impl Target for FakeTarget {
        fn check(&mut self) -> Result<()> {
            Ok(())
        }
        fn put_image(&mut self, _: &Image, _: Option<&Image>) -> Result<Upload> {
            unreachable!()
        }
        fn start(&mut self, _: &Image, _: &ServerSpec) -> Result<Server> {
            unreachable!()
        }
        fn console(&mut self, _: &Server) -> Result<String> {
            Ok(String::new())
        }
        fn address(&mut self, s: &Server) -> Result<Option<String>> {
            Ok(s.address.clone())
        }
        fn stop(&mut self, s: &Server) -> Result<()> {
            self.log.borrow_mut().push(format!("stop {}", s.name));
            self.running.retain(|r| r.id != s.id);
            Ok(())
        }
        fn servers(&mut self, _: &str) -> Result<Vec<Server>> {
            Ok(self.running.clone())
        }
    }

    impl Switch for FakeSwitch {
        fn check(&mut self) -> Result<()> {
            Ok(())
        }
        fn add(&mut self, s: &Server) -> Result<()> {
            self.log.borrow_mut().push(format!("add {}", s.name));
            self.backend.insert(s.name.clone(), true);
            Ok(())
        }
        fn healthy(&mut self, s: &Server) -> Result<bool> {
            Ok(self.backend.get(&s.name) == Some(&true))
        }
        fn drain(&mut self, s: &Server) -> Result<()> {
            self.backend.insert(s.name.clone(), false);
            Ok(())
        }
        fn sessions(&mut self, _: &Server) -> Result<u64> {
            Ok(0)
        }
        fn remove(&mut self, s: &Server) -> Result<()> {
            self.log.borrow_mut().push(format!("remove {}", s.name));
            self.backend.remove(&s.name);
            Ok(())
        }
    }

    fn server(name: &str) -> Server {
        Server {
            name: name.into(),
            id: name.into(),
            digest: "sha256:x".into(),
            address: Some("127.0.0.1:1".into()),
        }
    }

    fn deployed(image: &str, servers: &[&str]) -> Entry {
        Entry {
            time: "2026-01-01T00:00:00Z".into(),
            who: "t".into(),
            image: image.into(),
            version: "1".into(),
            env: "test".into(),
            digest: "sha256:x".into(),
            from: None,
            config: None,
            registry: None,
            signer: None,
            deploy: Some(Deployment {
                target: "libvirt".into(),
                kind: "deploy".into(),
                result: "ok".into(),
                error: None,
                identity_gate: true,
                servers: servers.iter().map(|s| server(s)).collect(),
                retired: vec![],
                steps: vec![],
                upload: None,
            }),
        }
    }

    /// `running` servers, `backend` (name, ready), reconciled against a ledger where
    /// `old-1`, `old-2` are the current servers of image `app` in `test`.
    fn run(running: &[&str], backend: &[(&str, bool)]) -> (Reconciled, FakeSwitch, Vec<String>) {
        let log = Log::default();
        let mut t = FakeTarget {
            running: running.iter().map(|s| server(s)).collect(),
            log: log.clone(),
        };
        let mut sw = FakeSwitch {
            backend: backend.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            log: log.clone(),
        };
        let history = vec![deployed("app", &["old-1", "old-2"])];
        let r = reconcile(&history, "test", Duration::ZERO, &mut t, &mut sw).unwrap();
        let events = log.borrow().clone();
        (r, sw, events)
    }

    fn names(b: &FakeSwitch) -> Vec<(&str, bool)> {
        b.backend.iter().map(|(n, r)| (n.as_str(), *r)).collect()
    }

    #[test]
    fn leftovers_beside_serving_current_servers_are_removed() {
        // Killed after the new servers joined the switch.
        let (r, sw, log) = run(
            &["old-1", "old-2", "new-1", "new-2"],
            &[
                ("old-1", true),
                ("old-2", true),
                ("new-1", true),
                ("new-2", true),
            ],
        );
        assert_eq!(r.removed, ["new-1", "new-2"]);
        assert!(r.restored.is_empty() && r.kept.is_empty());
        assert_eq!(names(&sw), [("old-1", true), ("old-2", true)]);
        assert_eq!(
            log,
            ["remove new-1", "stop new-1", "remove new-2", "stop new-2"]
        );
        // Killed before the switch: nothing of theirs in the backend.
        let (r, sw, _) = run(
            &["old-1", "old-2", "new-1"],
            &[("old-1", true), ("old-2", true)],
        );
        assert_eq!(r.removed, ["new-1"]);
        assert_eq!(names(&sw), [("old-1", true), ("old-2", true)]);
    }

    #[test]
    fn drained_or_removed_current_servers_are_put_back_before_leftovers_go() {
        // Killed while draining the old servers, and after removing them from the switch.
        for backend in [
            vec![("old-1", false), ("old-2", false), ("new-1", true)],
            vec![("new-1", true)],
        ] {
            let (r, sw, log) = run(&["old-1", "old-2", "new-1"], &backend);
            assert_eq!(r.restored, ["old-1", "old-2"]);
            assert_eq!(r.removed, ["new-1"]);
            assert_eq!(names(&sw), [("old-1", true), ("old-2", true)]);
            assert_eq!(
                log,
                ["add old-1", "add old-2", "remove new-1", "stop new-1"]
            );
        }
    }

    #[test]
    fn serving_leftovers_are_kept_when_no_current_server_runs() {
        // The recorded servers are gone and the unrecorded ones carry the traffic:
        // removing them would leave the backend empty.
        let (r, sw, log) = run(&["new-1", "new-2"], &[("new-1", true), ("new-2", true)]);
        assert!(r.removed.is_empty() && r.current.is_empty());
        assert_eq!(
            r.kept.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["new-1", "new-2"]
        );
        assert_eq!(names(&sw), [("new-1", true), ("new-2", true)]);
        assert!(log.is_empty(), "{log:?}");
        // One that does not serve goes even then.
        let (r, _, _) = run(&["new-1", "new-2"], &[("new-1", true)]);
        assert_eq!(r.removed, ["new-2"]);
        assert_eq!(r.kept.len(), 1);
    }

    #[test]
    fn another_images_current_servers_are_not_leftovers() {
        let log = Log::default();
        let mut t = FakeTarget {
            running: vec![server("old-1"), server("b-1"), server("new-1")],
            log: log.clone(),
        };
        let mut sw = FakeSwitch {
            backend: [("old-1".to_string(), true), ("b-1".to_string(), true)].into(),
            log: log.clone(),
        };
        let history = vec![deployed("app", &["old-1"]), deployed("billing", &["b-1"])];
        let r = reconcile(&history, "test", Duration::ZERO, &mut t, &mut sw).unwrap();
        assert_eq!(r.removed, ["new-1"]);
        assert_eq!(r.current.len(), 2);
    }
}
