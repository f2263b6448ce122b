//! `fuse build`: arguments -> [`crate::build::build`] -> the store, budgets, `--verify`, and
//! the result on stdout (the digest as the last line, or the `--json` document).

use crate::build::report::{check_budget, BuildJson};
use crate::build::{self, CacheOptions, Options};
use crate::cli::BuildArgs;
use crate::manifest;
use crate::mirror::Trust;
use anyhow::{bail, Result};

pub fn run(args: &BuildArgs) -> Result<u8> {
    let opts = Options {
        trust: Trust {
            allow_unsigned: args.insecure_allow_unsigned,
            allow_expired: args.allow_expired,
        },
        locked: args.locked,
        update: false,
    };
    // The manifest is validated (budget included) before anything is fetched.
    let m = manifest::load(&args.path)?;
    if args.plan {
        let (plan, _) = build::plan_of(&m, opts)?;
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    let cache = CacheOptions {
        registry: args.cache_registry.clone().filter(|r| !r.is_empty()),
        insecure: args.reg.insecure,
        username: args.reg.username.clone(),
    };
    // So is the signing key: one that does not match its certificate is an error up front.
    let signer = match (&args.sign_key, &args.sign_cert) {
        (Some(k), Some(c)) => Some(crate::sign::Signer::load(k, c)?),
        (None, None) => None,
        _ => bail!("--sign-key and --sign-cert (FUSE_SIGN_KEY, FUSE_SIGN_CERT) go together"),
    };
    let built = build::build(&m, args.out.as_deref(), opts, None, &cache, signer.as_ref())?;
    for (part, size) in &built.parts {
        tracing::info!(
            "  {part:<18} {:>10} bytes ({:.1} MiB)",
            size,
            *size as f64 / 1048576.0
        );
    }
    // Add the image to the local store (a failure there does not fail the build).
    let added = crate::image_store::Images::open_default()
        .and_then(|s| s.add_file(&built.image, &built.digest, &m.name, &m.version));
    match added {
        Ok(_) => tracing::info!("added to the local image store"),
        Err(e) => tracing::warn!("not added to the local image store: {e:#}"),
    }
    let budget = check_budget(&m.budget, &built)?;
    let verify = if args.verify {
        Some(build::verify::verify(&m, &built, opts, signer.as_ref())?)
    } else {
        None
    };
    let code = match (&verify, budget.exceeded) {
        (Some(v), _) if !v.reproducible => 4,
        (_, true) => 3,
        _ => 0,
    };
    if args.json {
        let j = BuildJson::new(&m, &built, budget, verify, code)?;
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        if verify.as_ref().is_some_and(|v| v.reproducible) {
            println!("verified: reproducible");
        }
        println!("{}", built.image.display());
        println!("{}", built.digest);
    }
    Ok(code)
}
