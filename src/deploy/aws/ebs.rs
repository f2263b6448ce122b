//! EBS direct upload: StartSnapshot (with the parent snapshot when the environment runs
//! one), PutSnapshotBlock for the blocks [`blocks::plan`] names, from a bounded pool of
//! workers, CompleteSnapshot with the linear aggregate checksum. A failure after
//! StartSnapshot deletes the pending snapshot (nothing half-made is left tagged).

use super::blocks::{self, Plan};
use super::client::Client;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks in flight at once.
pub const WORKERS: usize = 8;

/// What the upload made and sent.
#[derive(Clone, Debug, Default)]
pub struct Uploaded {
    pub snapshot_id: String,
    pub plan: Plan,
    pub bytes_sent: u64,
}

fn json_str(v: &serde_json::Value, k: &str) -> Option<String> {
    v[k].as_str().map(str::to_string)
}

/// Starts the snapshot: its id.
fn start(
    c: &Client,
    gib: u64,
    parent: Option<&str>,
    description: &str,
    tags: &[(&str, &str)],
    token: &str,
) -> Result<String> {
    let mut body = serde_json::json!({
        "VolumeSize": gib,
        "Description": description,
        "Timeout": 60,
        "ClientToken": token,
        "Tags": tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    });
    if let Some(p) = parent {
        body["ParentSnapshotId"] = p.into();
    }
    let h = [("content-type".to_string(), "application/json".to_string())];
    let a = c.send(
        "ebs:StartSnapshot",
        "ebs",
        "POST",
        "/snapshots",
        &h,
        body.to_string().as_bytes(),
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&a.body).context("ebs:StartSnapshot: answer is not JSON")?;
    // AWS answers 524288; a local emulator (moto) may answer otherwise and take the blocks
    // fuse sends anyway, so a different figure is logged, not refused.
    if let Some(bs) = v["BlockSize"]
        .as_u64()
        .filter(|&b| b as usize != blocks::BLOCK)
    {
        tracing::debug!("ebs:StartSnapshot: the endpoint says block size {bs}");
    }
    json_str(&v, "SnapshotId").context("ebs:StartSnapshot: no SnapshotId in the answer")
}

fn put(c: &Client, id: &str, index: u64, block: &[u8], sum: &[u8; 32]) -> Result<()> {
    let h = [
        (
            "content-type".to_string(),
            "application/octet-stream".to_string(),
        ),
        ("x-amz-data-length".to_string(), block.len().to_string()),
        ("x-amz-checksum".to_string(), blocks::b64(sum)),
        ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
    ];
    c.send(
        &format!("ebs:PutSnapshotBlock (block {index})"),
        "ebs",
        "PUT",
        &format!("/snapshots/{id}/blocks/{index}"),
        &h,
        block,
    )?;
    Ok(())
}

fn complete(c: &Client, id: &str, changed: usize, aggregate: &str) -> Result<()> {
    let h = [
        ("x-amz-changedblockscount".to_string(), changed.to_string()),
        ("x-amz-checksum".to_string(), aggregate.to_string()),
        ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
        (
            "x-amz-checksum-aggregation-method".to_string(),
            "LINEAR".to_string(),
        ),
    ];
    c.send(
        "ebs:CompleteSnapshot",
        "ebs",
        "POST",
        &format!("/snapshots/completion/{id}"),
        &h,
        b"",
    )?;
    Ok(())
}

/// Sends the planned blocks from [`WORKERS`] threads; the digests of the sent blocks by
/// position in `plan.send`.
fn send_blocks(c: &Client, id: &str, image: &[u8], plan: &Plan) -> Result<Vec<[u8; 32]>> {
    let next = AtomicUsize::new(0);
    let sums = Mutex::new(vec![[0u8; 32]; plan.send.len()]);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(plan.send.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = plan.send.get(k) else { break };
                if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let b = blocks::block(image, i);
                let sum = blocks::checksum(&b);
                match put(c, id, i, &b, &sum) {
                    Ok(()) => {
                        if let Ok(mut v) = sums.lock() {
                            v[k] = sum;
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    sums.into_inner()
        .map_err(|_| anyhow::anyhow!("a block upload thread panicked"))
}

/// Deletes a snapshot that did not complete (best effort: its error is logged).
fn discard(c: &Client, id: &str) {
    if let Err(e) = c.query("ec2", "DeleteSnapshot", &[("SnapshotId".into(), id.into())]) {
        tracing::warn!("could not delete the unfinished snapshot {id}: {e:#}");
    }
}

/// Uploads `image` as a new snapshot over `parent` (its snapshot id and its image bytes).
pub fn upload(
    c: &Client,
    image: &[u8],
    parent: Option<(&str, &[u8])>,
    description: &str,
    tags: &[(&str, &str)],
) -> Result<Uploaded> {
    let plan = blocks::plan(image, parent.map(|p| p.1));
    let gib = blocks::volume_gib(image.len().max(parent.map_or(0, |p| p.1.len())) as u64);
    // Idempotent start: the same image over the same parent asks for the same snapshot.
    let token = crate::digest::sha256_hex(
        format!("{description}\0{}", parent.map_or("", |p| p.0)).as_bytes(),
    );
    let id = start(c, gib, parent.map(|p| p.0), description, tags, &token[..64])?;
    let done = send_blocks(c, &id, image, &plan)
        .and_then(|sums| complete(c, &id, sums.len(), &blocks::linear_aggregate(sums.iter())));
    if let Err(e) = done {
        discard(c, &id);
        return Err(e.context(format!("uploading snapshot {id}")));
    }
    Ok(Uploaded {
        snapshot_id: id,
        bytes_sent: (plan.send.len() * blocks::BLOCK) as u64,
        plan,
    })
}
