//! `fuse deploy IMAGE ENV` and `fuse rollback ENV [--to DIGEST]`: arguments -> the
//! environment of fuse-envs.toml -> deploy::deploy over its target and switch -> print.

use crate::cli::{DeployArgs, RollbackArgs};
use crate::deploy::{self, GateFailed, Image, Request};
use crate::image_store::{default_data_dir, Images};
use crate::ledger::who;
use crate::ledger::{self, Project};
use anyhow::{bail, Context, Result};

/// The exit code of a deployment refused by a gate (docs/ci.md).
pub const EXIT_GATE: u8 = 5;

fn project_env(
    envs: Option<&std::path::Path>,
    env: &str,
) -> Result<(Project, crate::envs::EnvSpec)> {
    ledger::check_env(env)?;
    let project = ledger::load_project(envs, &default_data_dir()?)?;
    let Some(file) = &project.file else {
        bail!(
            "no {} here (or --envs FILE): `fuse deploy` needs an [env.{env}] with a target",
            ledger::ENVS_FILE
        );
    };
    let Some(spec) = project.env(env).cloned() else {
        bail!(
            "{}: environment {env} has no target ([env.{env}] target = \"libvirt\"): \
             nothing to deploy to (use `fuse promote` to only record a digest)",
            file.display()
        );
    };
    Ok((project, spec))
}

fn run(
    project: &Project,
    spec: &crate::envs::EnvSpec,
    img: &Image,
    kind: &str,
    who_: &str,
    json: bool,
) -> Result<u8> {
    let (mut target, mut switch) = deploy::connect(spec)?;
    let req = Request { kind, who: who_ };
    match deploy::deploy(project, spec, img, &req, target.as_mut(), switch.as_mut()) {
        Ok(e) => {
            let d = e.deploy.as_ref().context("no deployment record")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
                return Ok(0);
            }
            for s in &d.servers {
                println!(
                    "{} {} {}",
                    s.name,
                    s.address.as_deref().unwrap_or("-"),
                    s.digest
                );
            }
            println!(
                "deployed {} {} {} to {} ({} servers{})",
                e.image,
                e.version,
                e.digest,
                e.env,
                d.servers.len(),
                if d.retired.is_empty() {
                    String::new()
                } else {
                    format!(", {} retired", d.retired.len())
                }
            );
            Ok(0)
        }
        Err(err) => match err.downcast_ref::<GateFailed>() {
            Some(g) => {
                eprintln!(
                    "fuse: deploy of {} to {} failed: {g}",
                    img.digest, spec.name
                );
                Ok(EXIT_GATE)
            }
            None => Err(err),
        },
    }
}

pub fn deploy(args: &DeployArgs) -> Result<u8> {
    let (project, spec) = project_env(args.envs.as_deref(), &args.env)?;
    let img = Image::open(&args.image)?;
    // Kept in the local store, so that `fuse rollback` finds it by digest later.
    Images::open(&default_data_dir()?)?
        .add_file(&img.path, &img.digest, &img.meta.name, &img.meta.version)
        .context("cannot keep the image in the local store")?;
    run(
        &project,
        &spec,
        &img,
        "deploy",
        &who(args.who.as_deref()),
        args.json,
    )
}

pub fn rollback(args: &RollbackArgs) -> Result<u8> {
    let (project, spec) = project_env(args.envs.as_deref(), &args.env)?;
    let history = ledger::read(&project.ledger)?;
    let (image, digest) = deploy::rollback_digest(
        &history,
        args.image.as_deref(),
        &args.env,
        args.to.as_deref(),
    )?;
    let img = Image::open(&digest)
        .with_context(|| format!("{image} {digest} is not in the local store"))?;
    tracing::info!(
        "rolling {} back to {} {}",
        args.env,
        img.meta.version,
        img.digest
    );
    run(
        &project,
        &spec,
        &img,
        "rollback",
        &who(args.who.as_deref()),
        args.json,
    )
}
