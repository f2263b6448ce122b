//! AWS target, EBS direct upload against a local `moto` server (scripts/setup.sh installs
//! it): the first snapshot receives exactly the image's non-zero 512 KiB blocks, a child
//! snapshot over it exactly the blocks that changed (moto does not model parents, so the
//! child's ListSnapshotBlocks lists what was sent), and CompleteSnapshot takes the
//! checksums. The server is started on a free 127.0.0.1 port and stopped by pid.

use crate::support::*;
use fuse::deploy::aws::{blocks, client::Client, ebs, sigv4::Credentials};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Option<Moto> {
    if !require_tool("moto_server") {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start moto_server");
    let m = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "moto did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(m)
}

fn client(m: &Moto) -> Client {
    Client::with(
        "eu-west-1".into(),
        Credentials {
            access_key: "AKIDTEST".into(),
            secret_key: "secret".into(),
            token: None,
        },
        Some(m.url.clone()),
    )
}

/// The block indexes the snapshot holds, from ListSnapshotBlocks.
fn listed(c: &Client, id: &str) -> Vec<u64> {
    let a = c
        .send(
            "ebs:ListSnapshotBlocks",
            "ebs",
            "GET",
            &format!("/snapshots/{id}/blocks?maxResults=10000"),
            &[],
            b"",
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let mut out: Vec<u64> = v["Blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BlockIndex"].as_u64().unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn ebs_upload_sends_non_zero_blocks_then_only_changed_ones() {
    let Some(m) = start_moto() else { return };
    let c = client(&m);
    let v1 = std::fs::read(&shared_image().image).unwrap();
    let non_zero: Vec<u64> = (0..v1.len().div_ceil(blocks::BLOCK) as u64)
        .filter(|&i| blocks::block(&v1, i).iter().any(|&b| b != 0))
        .collect();
    let up1 = ebs::upload(&c, &v1, None, "hello v1", &[("fuse:digest", "sha256:v1")]).unwrap();
    assert_eq!(listed(&c, &up1.snapshot_id), non_zero);
    assert_eq!(up1.plan.send, non_zero);
    assert_eq!(up1.plan.total, v1.len().div_ceil(blocks::BLOCK) as u64);
    assert_eq!(up1.bytes_sent, (non_zero.len() * blocks::BLOCK) as u64);

    // v2: two blocks change, one non-zero block is cleared.
    let mut v2 = v1.clone();
    let (a, b) = (non_zero[1], non_zero[non_zero.len() / 2]);
    v2[a as usize * blocks::BLOCK + 10] ^= 0xff;
    v2[b as usize * blocks::BLOCK + 99] ^= 0x01;
    let cleared = *non_zero.last().unwrap();
    let end = ((cleared as usize + 1) * blocks::BLOCK).min(v2.len());
    v2[cleared as usize * blocks::BLOCK..end].fill(0);
    let up2 = ebs::upload(
        &c,
        &v2,
        Some((&up1.snapshot_id, &v1)),
        "hello v2",
        &[("fuse:digest", "sha256:v2")],
    )
    .unwrap();
    let mut want = vec![a, b, cleared];
    want.sort();
    want.dedup();
    assert_eq!(listed(&c, &up2.snapshot_id), want);
    assert_eq!(
        up2.plan.skipped_unchanged,
        non_zero.len() as u64 - want.len() as u64
    );
}
