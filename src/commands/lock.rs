//! `fuse lock`: resolve the manifest (and the app's libraries) against the archive and pin
//! the result in fuse.lock; `--update` re-resolves even when the lock still matches.

use crate::build::prepare::{self, Locked};
use crate::build::{lock_path, Options};
use crate::cli::LockArgs;
use crate::mirror::Trust;
use anyhow::Result;

pub fn run(args: &LockArgs) -> Result<u8> {
    let m = crate::manifest::load(&args.path)?;
    let opts = Options {
        trust: Trust {
            allow_unsigned: args.insecure_allow_unsigned,
            allow_expired: args.allow_expired,
        },
        locked: false,
        update: args.update,
    };
    let Locked { lock, changed, .. } = prepare::lock(&m, opts)?;
    let path = lock_path(&m);
    if changed {
        lock.save(&path)?;
    }
    println!("{}", path.display());
    for p in &lock.packages {
        println!("{} {} {}", p.name, p.version, p.arch);
    }
    Ok(0)
}
