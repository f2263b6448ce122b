//! The steps every command that needs a plan shares (`build`, `build --plan`, `lock`): the
//! one scan of the app, the lock (fuse.lock or a fresh resolution), the plan.

use crate::app::{self, AppScan};
use crate::manifest::Manifest;
use crate::mirror::Session;
use crate::pin::{obtain_lock, Options};
use crate::plan::{self, Plan};
use crate::resolve::lock::Lock;
use anyhow::{Context, Result};

/// The app scanned and the lock obtained for a manifest.
pub struct Locked {
    pub app: AppScan,
    pub session: Session,
    pub lock: Lock,
    /// Whether the lock must still be written (fresh or updated).
    pub changed: bool,
}

/// Scan the app (its one reading) and obtain the lock.
pub fn lock(m: &Manifest, opts: Options) -> Result<Locked> {
    let session = Session::open()?;
    let app = match m.kind {
        crate::manifest::AppKind::Oci => crate::oci::app::scan(m, Some(&session.store))?,
        _ => app::scan_app(m, Some(&session.store))?,
    };
    let (lock, changed) = obtain_lock(&session, m, &app, opts)?;
    Ok(Locked {
        app,
        session,
        lock,
        changed,
    })
}

/// The plan of a locked manifest, and the epoch it was made for.
pub fn plan(m: &Manifest, lock: &Lock, app: &AppScan) -> Result<(Plan, u64)> {
    let epoch = source_epoch(lock.archive.epoch)?;
    Ok((plan::plan(m, lock, app, epoch)?, epoch))
}

/// The plan of `m` (resolving, without writing, a lock when needed), and whether the lock
/// would change.
pub fn plan_of(m: &Manifest, opts: Options) -> Result<(Plan, bool)> {
    let l = lock(m, opts)?;
    let (p, _) = plan(m, &l.lock, &l.app)?;
    Ok((p, l.changed))
}

/// The reproducibility clock: SOURCE_DATE_EPOCH when set (malformed is an error), else the
/// locked archive's Release date.
pub fn source_epoch(locked: u64) -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a whole number of seconds")),
        _ => Ok(locked),
    }
}
