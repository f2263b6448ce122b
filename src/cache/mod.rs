//! Built units (layers, kernel, initramfs, UKI) cached by their plan key.
//!
//! An entry is self-describing: a record `named/unit-<key>` in the download cache's store
//! names its key, its kind, the sha256 and size of its bytes and the unit's metadata (for a
//! layer the image.json entry); the bytes are a content-addressed blob `sha256/<hex>`. A
//! read checks the record against the key asked for and the blob against the record's
//! sha256: a mismatch (a swapped or corrupt blob, a record copied from another key) is a
//! miss with a warning, and the unit is built again.
//!
//! With a registry cache ([`registry`]), a local miss is looked up in the registry (its
//! bytes verified before use and copied into the local cache), and every unit the registry
//! lacks is pushed once the build has it.

mod record;
pub mod registry;

pub use record::{Record, RECORD_FORMAT};

use crate::plan::UnitKind;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Where a unit of a build came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Built,
    LocalCache,
    RegistryCache,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Built => "built",
            Source::LocalCache => "local-cache",
            Source::RegistryCache => "registry-cache",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cache hit: the record, the verified bytes, where they came from.
pub type Hit<M> = (Record<M>, Vec<u8>, Source);

/// The unit cache: local, and optionally an OCI registry behind it.
pub struct Cache {
    store: Store,
    remote: Option<Mutex<Remote>>,
    /// Record names of the units this build copied from the registry into the local cache.
    imported: Mutex<Vec<String>>,
}

struct Remote {
    registry: registry::RegistryCache,
    /// Set after the registry failed to answer: the build goes on without it.
    broken: bool,
    /// Keys the registry lacks, pushed by [`Cache::push_missing`].
    missing: Vec<String>,
}

fn record_name(key: &str) -> String {
    format!("unit-{key}")
}

impl Cache {
    pub fn new(store: &Store) -> Cache {
        Cache {
            store: store.clone(),
            remote: None,
            imported: Mutex::new(Vec::new()),
        }
    }

    /// A cache backed by a registry cache as well.
    pub fn with_registry(store: &Store, registry: registry::RegistryCache) -> Cache {
        Cache {
            store: store.clone(),
            remote: Some(Mutex::new(Remote {
                registry,
                broken: false,
                missing: Vec::new(),
            })),
            imported: Mutex::new(Vec::new()),
        }
    }

    /// Ask the registry (when there is one, and it still answers) for `key`: its record
    /// text and bytes, verified; the unit is then copied into the local cache. `local_hit`:
    /// only check that the registry has it (to push it when not).
    fn remote_lookup(&self, kind: &str, key: &str, local_hit: bool) -> Option<(Vec<u8>, Vec<u8>)> {
        let remote = self.remote.as_ref()?;
        let mut r = remote.lock().ok()?;
        if r.broken {
            return None;
        }
        let found = if local_hit {
            r.registry.has(key).map(|h| h.then(Default::default))
        } else {
            r.registry.get(kind, key)
        };
        match found {
            Ok(Some(hit)) => Some(hit),
            Ok(None) => {
                r.missing.push(key.to_string());
                None
            }
            Err(e) if registry::is_refusal(&e) => {
                tracing::warn!("registry cache: {kind} {key} refused ({e:#}); building it locally");
                None
            }
            Err(e) => {
                tracing::warn!(
                    "registry cache {} does not answer ({e:#}); building without it",
                    r.registry.reference()
                );
                r.broken = true;
                None
            }
        }
    }

    /// A unit found in the registry, copied into the local cache and read back from it.
    fn import<M: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
        text: &[u8],
        bytes: &[u8],
    ) -> Result<Option<Record<M>>> {
        let rec: Record<serde_json::Value> =
            serde_json::from_slice(text).context("registry cache record")?;
        self.store
            .put(&rec.sha256, bytes)
            .with_context(|| format!("cannot cache {kind} {key}"))?;
        self.store.put_named(&record_name(key), text)?;
        if let Ok(mut v) = self.imported.lock() {
            v.push(record_name(key));
        }
        self.local_record(kind, key)
    }

    /// How many units this build took from the registry cache.
    pub fn imported(&self) -> usize {
        self.imported.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Removes from the local cache the records of every unit this build took from the
    /// registry (their blobs stay, unreferenced): after the image they made did not
    /// verify, none of them is trusted again as a local unit.
    pub fn forget_imported(&self) -> Result<usize> {
        let names = std::mem::take(&mut *self.imported.lock().unwrap_or_else(|e| e.into_inner()));
        for n in &names {
            self.store.remove_named(n)?;
        }
        Ok(names.len())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The record stored for `key`, checked (format, kind, key), without the bytes.
    /// `Ok(None)`: no usable record (absent, or refused with a warning).
    pub fn record<M: DeserializeOwned>(
        &self,
        kind: UnitKind,
        key: &str,
    ) -> Result<Option<Record<M>>> {
        let kind = kind.as_str();
        self.local_record(kind, key)
    }

    fn local_record<M: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<Record<M>>> {
        let Some(text) = self.store.get_named(&record_name(key))? else {
            return Ok(None);
        };
        let rec: Record<M> = match serde_json::from_slice(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cache record of {kind} {key} is unreadable ({e}); building it again"
                );
                return Ok(None);
            }
        };
        if rec.format != RECORD_FORMAT || rec.kind != kind || rec.key != key {
            tracing::warn!(
                "cache record under {kind} key {key} describes {} {} (format {}); building it again",
                rec.kind,
                rec.key,
                rec.format
            );
            return Ok(None);
        }
        Ok(Some(rec))
    }

    /// The bytes of a record, verified against its sha256 and size; `None` (with a warning
    /// when present but wrong) when they cannot be used.
    pub fn bytes<M>(&self, rec: &Record<M>) -> Option<Vec<u8>> {
        match self.store.get(&rec.sha256) {
            Ok(Some(b)) if b.len() as u64 == rec.size => Some(b),
            Ok(Some(b)) => {
                tracing::warn!(
                    "cached {} {}: {} bytes, the record says {}; building it again",
                    rec.kind,
                    rec.key,
                    b.len(),
                    rec.size
                );
                None
            }
            Ok(None) => {
                tracing::debug!(
                    "cached {} {}: blob {} is gone",
                    rec.kind,
                    rec.key,
                    rec.sha256
                );
                None
            }
            Err(e) => {
                tracing::warn!("cached {} {}: {e:#}; building it again", rec.kind, rec.key);
                None
            }
        }
    }

    /// Record and bytes of `key`, both verified, from the local cache, else from the
    /// registry cache; `None` on a miss (the unit is then built).
    pub fn get<M: DeserializeOwned>(&self, kind: UnitKind, key: &str) -> Result<Option<Hit<M>>> {
        let kind = kind.as_str();
        if let Some(rec) = self.local_record::<M>(kind, key)? {
            if let Some(b) = self.bytes(&rec) {
                self.remote_lookup(kind, key, true);
                return Ok(Some((rec, b, Source::LocalCache)));
            }
        }
        self.get_remote(kind, key)
    }

    fn get_remote<M: DeserializeOwned>(&self, kind: &str, key: &str) -> Result<Option<Hit<M>>> {
        let Some((text, bytes)) = self.remote_lookup(kind, key, false) else {
            return Ok(None);
        };
        Ok(self
            .import::<M>(kind, key, &text, &bytes)?
            .map(|rec| (rec, bytes, Source::RegistryCache)))
    }

    /// The record of `key` when only its metadata is needed: a local record whose blob is
    /// present (not re-hashed), else the registry's (bytes verified and cached).
    pub fn lookup_record<M: DeserializeOwned>(
        &self,
        kind: UnitKind,
        key: &str,
    ) -> Result<Option<(Record<M>, Source)>> {
        let kind = kind.as_str();
        if let Some(rec) = self.local_record::<M>(kind, key)? {
            if self.store.blob_path(&rec.sha256).exists() {
                self.remote_lookup(kind, key, true);
                return Ok(Some((rec, Source::LocalCache)));
            }
        }
        Ok(self.get_remote(kind, key)?.map(|(r, _, s)| (r, s)))
    }

    /// Whether the local cache has a record for `key` and its blob (not read, not
    /// verified: [`Cache::get`] does that).
    pub fn has_local(&self, kind: UnitKind, key: &str) -> Result<bool> {
        let kind = kind.as_str();
        Ok(match self.local_record::<serde_json::Value>(kind, key)? {
            Some(rec) => self.store.blob_path(&rec.sha256).exists(),
            None => false,
        })
    }

    /// Push every unit the registry lacked (a failure is a warning: the build stands).
    /// Returns (units pushed, bytes sent).
    pub fn push_missing(&self) -> (usize, u64) {
        let Some(remote) = &self.remote else {
            return (0, 0);
        };
        let Ok(mut r) = remote.lock() else {
            return (0, 0);
        };
        let mut pushed = 0;
        let keys = std::mem::take(&mut r.missing);
        for key in keys {
            if r.broken {
                break;
            }
            let unit = (|| -> Result<Option<(Vec<u8>, Vec<u8>)>> {
                let Some(text) = self.store.get_named(&record_name(&key))? else {
                    return Ok(None);
                };
                let rec: Record<serde_json::Value> = serde_json::from_slice(&text)?;
                Ok(self.store.get(&rec.sha256)?.map(|b| (text, b)))
            })();
            match unit {
                Ok(Some((text, bytes))) => match r.registry.put(&key, &text, &bytes) {
                    Ok(()) => pushed += 1,
                    Err(e) => {
                        tracing::warn!("registry cache: cannot push {key}: {e:#}");
                        r.broken = true;
                    }
                },
                Ok(None) => tracing::debug!("registry cache: {key} is not in the local cache"),
                Err(e) => tracing::warn!("registry cache: cannot read {key} locally: {e:#}"),
            }
        }
        (pushed, r.registry.bytes_sent())
    }

    /// Store a built unit: its bytes by sha256, then its record under its key.
    pub fn put<M: Serialize + Clone>(
        &self,
        kind: UnitKind,
        key: &str,
        meta: &M,
        bytes: &[u8],
    ) -> Result<Record<M>> {
        let kind = kind.as_str();
        // The digest is computed once, here, from the bytes that are written.
        let (sha256, _) = self
            .store
            .add(bytes)
            .with_context(|| format!("cannot cache {kind} {key}"))?;
        let rec = Record {
            format: RECORD_FORMAT,
            kind: kind.into(),
            key: key.into(),
            sha256,
            size: bytes.len() as u64,
            meta: meta.clone(),
        };
        self.put_record(&rec)?;
        Ok(rec)
    }

    /// Store a record whose bytes are already in the store (checked).
    pub fn put_record<M: Serialize>(&self, rec: &Record<M>) -> Result<()> {
        let text = serde_json::to_vec(rec)?;
        self.store.put_named(&record_name(&rec.key), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_swaps_are_misses() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(&Store::open(d.path()).unwrap());
        let k1 = "1".repeat(64);
        let k2 = "2".repeat(64);
        assert!(c.get::<String>(UnitKind::Layer, &k1).unwrap().is_none());
        let r1 = c
            .put(UnitKind::Layer, &k1, &"one".to_string(), b"bytes one")
            .unwrap();
        let r2 = c
            .put(UnitKind::Layer, &k2, &"two".to_string(), b"bytes two")
            .unwrap();
        let (rec, bytes, src) = c.get::<String>(UnitKind::Layer, &k1).unwrap().unwrap();
        assert_eq!(src, Source::LocalCache);
        assert_eq!(
            (rec.meta.as_str(), bytes.as_slice()),
            ("one", &b"bytes one"[..])
        );
        // Another kind under the same key: refused.
        assert!(c.get::<String>(UnitKind::Kernel, &k1).unwrap().is_none());
        // A blob swapped for another entry's bytes: refused.
        let blob = c.store().blob_path(&r1.sha256);
        std::fs::copy(c.store().blob_path(&r2.sha256), &blob).unwrap();
        assert!(c.get::<String>(UnitKind::Layer, &k1).unwrap().is_none());
        // Rebuilt: usable again.
        c.put(UnitKind::Layer, &k1, &"one".to_string(), b"bytes one")
            .unwrap();
        assert!(c.get::<String>(UnitKind::Layer, &k1).unwrap().is_some());
        // A record copied from another key: refused.
        let text = c.store.get_named(&record_name(&k2)).unwrap().unwrap();
        c.store().put_named(&format!("unit-{k1}"), &text).unwrap();
        assert!(c.get::<String>(UnitKind::Layer, &k1).unwrap().is_none());
    }
}
