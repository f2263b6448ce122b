//! The registry cache: built units shared through any OCI registry, for teams and CI fleets.
//!
//! A unit is an OCI image manifest tagged `unit-<key>` in the given repository, with
//! `artifactType` [`UNIT_TYPE`], the cache record (kind, key, sha256 and size of the bytes,
//! metadata) as its config blob and the unit's bytes as its one layer. A lookup fetches the
//! manifest by tag, checks that the record names the key asked for and that the layer is
//! the record's bytes, and verifies every blob's size and sha256 before use: a mismatch is
//! refused and the unit is built locally. Who can write to the repository can choose a
//! unit's bytes for a key (see docs/trust.md); the image digest and `fuse inspect` still
//! show what an image holds.

use super::record::{Record, RECORD_FORMAT};
use crate::digest::sha256_hex;
use crate::oci::client::{credentials, Client};
use crate::oci::{verify_blob, Descriptor, Manifest, Reference, MANIFEST_TYPE};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;

/// What a unit manifest is.
pub const UNIT_TYPE: &str = "application/vnd.fuse.unit.v1";
/// Its config blob: the cache record (JSON).
pub const RECORD_TYPE: &str = "application/vnd.fuse.unit.record.v1+json";
/// Its one layer: the unit's bytes.
pub const BYTES_TYPE: &str = "application/vnd.fuse.unit.bytes.v1";
/// Manifest annotations naming the unit.
pub const ANN_KEY: &str = "vnd.fuse.unit.key";
pub const ANN_KIND: &str = "vnd.fuse.unit.kind";

/// Largest unit accepted from a registry.
pub const MAX_UNIT: u64 = 4 << 30;
/// Largest record accepted.
pub const MAX_RECORD: u64 = 64 << 20;

/// A registry answer that is not the unit asked for (as opposed to a registry that does
/// not answer): the unit is built locally and the registry is still asked for others.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Was this lookup error a refused unit (bad bytes, a record for another key)?
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Refused>())
}

fn refuse(msg: String) -> anyhow::Error {
    anyhow::Error::new(Refused(msg))
}

/// A connection to the repository that holds the units.
pub struct RegistryCache {
    client: Client,
    reference: String,
}

/// The tag of a unit.
pub fn tag(key: &str) -> String {
    format!("unit-{key}")
}

impl RegistryCache {
    /// `reference`: REGISTRY/REPOSITORY (a tag, if given, is ignored).
    pub fn open(reference: &str, insecure: bool, username: Option<&str>) -> Result<RegistryCache> {
        let r = Reference::parse(reference)
            .with_context(|| format!("--cache-registry {reference:?}"))?;
        let creds = credentials(&r, username)?;
        Ok(RegistryCache {
            client: Client::new(&r, insecure, creds, true),
            reference: format!("{}/{}", r.registry, r.repository),
        })
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn bytes_sent(&self) -> u64 {
        self.client.bytes_sent()
    }

    /// Does the registry have a unit under `key`?
    pub fn has(&self, key: &str) -> Result<bool> {
        self.client.manifest_exists(&tag(key))
    }

    /// The unit under `key`: its record text and bytes, both verified against the manifest,
    /// the record against the key and kind. `Ok(None)`: the registry has no such unit.
    pub fn get(&self, kind: &str, key: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(mbytes) = self.client.find_manifest(&tag(key))? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| refuse(format!("the manifest of {} is not JSON: {e}", tag(key))))?;
        if m.artifact_type.as_deref() != Some(UNIT_TYPE)
            || m.config.media_type != RECORD_TYPE
            || m.layers.len() != 1
            || m.layers[0].media_type != BYTES_TYPE
        {
            return Err(refuse(format!("{} is not a fuse unit", tag(key))));
        }
        if m.config.size > MAX_RECORD || m.layers[0].size > MAX_UNIT {
            return Err(refuse(format!("{} is too large", tag(key))));
        }
        let text = self.client.get_blob(&m.config)?;
        verify_blob(&m.config, &text).map_err(|e| refuse(format!("record: {e:#}")))?;
        let rec: Record<serde_json::Value> = serde_json::from_slice(&text)
            .map_err(|e| refuse(format!("the record is not a cache record: {e}")))?;
        if rec.format != RECORD_FORMAT || rec.kind != kind || rec.key != key {
            return Err(refuse(format!(
                "the record under {} describes {} {} (format {})",
                tag(key),
                rec.kind,
                rec.key,
                rec.format
            )));
        }
        let layer = &m.layers[0];
        if layer.digest != format!("sha256:{}", rec.sha256) || layer.size != rec.size {
            return Err(refuse(format!(
                "the bytes of {} are not the ones its record names",
                tag(key)
            )));
        }
        let bytes = self.client.get_blob(layer)?;
        verify_blob(layer, &bytes).map_err(|e| refuse(format!("{e:#}")))?;
        Ok(Some((text, bytes)))
    }

    /// Push a unit: its bytes and record as blobs (skipped when the registry has them),
    /// then the manifest under the unit's tag.
    pub fn put(&self, key: &str, record: &[u8], bytes: &[u8]) -> Result<()> {
        let rec: Record<serde_json::Value> =
            serde_json::from_slice(record).context("a local cache record")?;
        ensure!(
            rec.key == key,
            "the local record of {key} names {}",
            rec.key
        );
        let got = sha256_hex(bytes);
        if got != rec.sha256 {
            bail!("the local bytes of {key} hash to {got}, not {}", rec.sha256);
        }
        let layer = Descriptor {
            media_type: BYTES_TYPE.into(),
            digest: format!("sha256:{got}"),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        };
        let config = Descriptor {
            media_type: RECORD_TYPE.into(),
            digest: format!("sha256:{}", sha256_hex(record)),
            size: record.len() as u64,
            annotations: BTreeMap::new(),
        };
        for (d, data) in [(&layer, bytes), (&config, record)] {
            if !self.client.blob_exists(&d.digest)? {
                self.client.upload_blob(&d.digest, data)?;
            }
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_TYPE.into()),
            artifact_type: Some(UNIT_TYPE.into()),
            config,
            layers: vec![layer],
            annotations: BTreeMap::from([
                (ANN_KEY.to_string(), key.to_string()),
                (ANN_KIND.to_string(), rec.kind.clone()),
            ]),
        };
        self.client
            .put_manifest(&tag(key), &serde_json::to_vec(&manifest)?)?;
        tracing::debug!("registry cache: pushed {} {key}", rec.kind);
        Ok(())
    }
}
