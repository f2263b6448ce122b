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
    start_moto_recording(None)
}

/// moto, recording every request (headers, url, body) as JSON lines into `record` when set.
fn start_moto_recording(record: Option<&std::path::Path>) -> Option<Moto> {
    if !require_tool("moto_server") {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("moto_server");
    if let Some(r) = record {
        cmd.env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", r);
    }
    let child = cmd
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
        // moto answers the index as it came in the request path (a string); AWS, a number.
        .map(|b| {
            let i = &b["BlockIndex"];
            i.as_u64()
                .or_else(|| i.as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        })
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

/// One recorded request: method, url path, body (form text, or base64 for binary bodies).
struct Call {
    method: String,
    path: String,
    body: String,
}

fn recorded(path: &std::path::Path) -> Vec<Call> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let url = v["url"].as_str().unwrap_or("").to_string();
            let path = url
                .split_once("://")
                .map(|(_, r)| r[r.find('/').unwrap_or(r.len())..].to_string())
                .unwrap_or(url);
            let body = v["body"].as_str().unwrap_or("").to_string();
            let body = if v["body_encoded"].as_bool() == Some(true) && !path.contains("/blocks/") {
                use base64::Engine;
                String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD
                        .decode(&body)
                        .unwrap_or_default(),
                )
                .into_owned()
            } else {
                body
            };
            Call {
                method: v["method"].as_str().unwrap_or("").to_string(),
                path,
                body,
            }
        })
        .collect()
}

/// The form parameters of query calls with `Action=action`.
fn actions(calls: &[Call], action: &str) -> Vec<Vec<(String, String)>> {
    calls
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| {
            c.body
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect::<Vec<_>>()
        })
        .filter(|p| p.iter().any(|(k, v)| k == "Action" && v == action))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn param<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

/// The text of every `<tag>` in an XML answer.
fn xml_texts(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|r| r.split_once(&close).map(|(t, _)| t.trim().to_string()))
        .collect()
}

#[test]
fn deploy_to_aws_sends_changed_blocks_switches_the_target_group_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("moto.jsonl");
    let Some(m) = start_moto_recording(Some(&rec)) else {
        return;
    };
    let c = client(&m);
    let v = crate::deploy::versions();
    let (v1, v2) = (&v.images[0], &v.images[1]);
    let (b1, b2) = (std::fs::read(v1).unwrap(), std::fs::read(v2).unwrap());

    // A VPC and an instance target group, as an operator has them.
    let vpc = c
        .query(
            "ec2",
            "CreateVpc",
            &[("CidrBlock".into(), "10.0.0.0/16".into())],
        )
        .unwrap();
    let vpc = xml_texts(&vpc, "vpcId").remove(0);
    let tg = c
        .query(
            "elasticloadbalancing",
            "CreateTargetGroup",
            &[
                ("Name".into(), "fuse-prod".into()),
                ("Protocol".into(), "HTTP".into()),
                ("Port".into(), "8080".into()),
                ("VpcId".into(), vpc),
                ("TargetType".into(), "instance".into()),
            ],
        )
        .unwrap();
    let tg = xml_texts(&tg, "TargetGroupArn").remove(0);
    std::fs::write(
        dir.path().join("fuse-envs.toml"),
        format!(
            "order = [\"prod\"]\nledger = \"ledger.jsonl\"\n\n[env.prod]\ntarget = \"aws\"\n\
             instances = 2\nconfig = \"prod.env\"\nhealth_timeout = \"60s\"\ndrain = \"1s\"\n\
             identity_gate = false\n[env.prod.aws]\nregion = \"eu-west-1\"\n\
             instance_type = \"t3.small\"\ntarget_group = \"{tg}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("prod.env"), "COLOR=amber\n").unwrap();
    let data = dir.path().join("data");
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL", m.url.as_str()),
    ];
    let deploy = |img: &str| -> serde_json::Value {
        let o = fuse_in(dir.path(), &data, &["deploy", img, "prod", "--json"], &env);
        serde_json::from_str(&ok(&o, &format!("fuse deploy {img} prod"))).unwrap()
    };
    let targets = || -> Vec<String> {
        let x = c
            .query(
                "elasticloadbalancing",
                "DescribeTargetHealth",
                &[("TargetGroupArn".into(), tg.clone())],
            )
            .unwrap();
        let mut ids = xml_texts(&x, "Id");
        ids.sort();
        ids
    };
    let state = |id: &str| -> String {
        let x = c
            .query(
                "ec2",
                "DescribeInstances",
                &[("InstanceId.1".into(), id.into())],
            )
            .unwrap();
        xml_texts(&x, "name").into_iter().next().unwrap_or_default()
    };
    let ids = |e: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = e["deploy"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };

    // v1: an AMI (UEFI, ENA) from a snapshot of exactly the non-zero blocks; two instances
    // with the config as user data, registered in the target group. (Blocks are counted
    // by what the snapshot holds: moto's recorder loses lines of parallel requests.)
    let e1 = deploy(v1.to_str().unwrap());
    let calls = recorded(&rec);
    let non_zero: Vec<u64> = (0..b1.len().div_ceil(blocks::BLOCK) as u64)
        .filter(|&i| blocks::block(&b1, i).iter().any(|&b| b != 0))
        .collect();
    let snaps = || -> Vec<String> {
        xml_texts(
            &c.query(
                "ec2",
                "DescribeSnapshots",
                &[
                    ("Owner.1".into(), "self".into()),
                    ("Filter.1.Name".into(), "tag-key".into()),
                    ("Filter.1.Value.1".into(), "fuse:digest".into()),
                ],
            )
            .unwrap(),
            "snapshotId",
        )
    };
    let snap1 = snaps();
    assert_eq!(snap1.len(), 1, "{}", snap1.len());
    assert_eq!(listed(&c, &snap1[0]), non_zero);
    assert_eq!(e1["deploy"]["upload"]["blocks_sent"], non_zero.len() as u64);
    let reg = actions(&calls, "RegisterImage");
    assert_eq!(reg.len(), 1);
    assert_eq!(param(&reg[0], "BootMode"), Some("uefi"));
    assert_eq!(param(&reg[0], "EnaSupport"), Some("true"));
    assert_eq!(
        param(&reg[0], "BlockDeviceMapping.1.Ebs.SnapshotId"),
        Some(snap1[0].as_str())
    );
    let run = actions(&calls, "RunInstances");
    assert_eq!(run.len(), 2);
    use base64::Engine;
    let user_data = base64::engine::general_purpose::STANDARD.encode("COLOR=amber\n");
    assert!(run
        .iter()
        .all(|p| param(p, "UserData") == Some(user_data.as_str())));
    let v1_ids = ids(&e1);
    assert_eq!(v1_ids.len(), 2);
    assert_eq!(targets(), v1_ids);

    // v2, an app-only change: the snapshot names v1's as parent and only the changed
    // blocks are sent; v1's instances leave the target group and are terminated.
    let before = calls.len();
    let e2 = deploy(v2.to_str().unwrap());
    let calls = recorded(&rec);
    let changed = blocks::plan(&b2, Some(&b1)).send;
    assert!(
        !changed.is_empty() && changed.len() < non_zero.len() / 2,
        "{changed:?} of {non_zero:?}"
    );
    let snap2: Vec<String> = snaps().into_iter().filter(|s| *s != snap1[0]).collect();
    assert_eq!(snap2.len(), 1);
    assert_eq!(listed(&c, &snap2[0]), changed);
    assert_eq!(e2["deploy"]["upload"]["blocks_sent"], changed.len() as u64);
    let start = calls[before..]
        .iter()
        .find(|c| c.method == "POST" && c.path == "/snapshots")
        .expect("StartSnapshot");
    let start: serde_json::Value = serde_json::from_str(&start.body).unwrap();
    assert_eq!(start["ParentSnapshotId"], snap1[0].as_str());
    let v2_ids = ids(&e2);
    assert_eq!(targets(), v2_ids);
    assert!(v1_ids.iter().all(|i| state(i) == "terminated"));
    eprintln!(
        "aws deploy: v1 sent {} of {} blocks, v2 sent {}",
        non_zero.len(),
        b1.len().div_ceil(blocks::BLOCK),
        changed.len()
    );

    // v2 again: nothing uploaded.
    let e3 = deploy(v2.to_str().unwrap());
    assert_eq!(snaps().len(), 2);
    assert_eq!(e3["deploy"]["upload"]["reused"], true);
    assert_eq!(e3["deploy"]["upload"]["blocks_sent"], 0);

    // Rollback: v1's AMI again (no upload), new instances registered, v2's retired.
    let o = fuse_in(dir.path(), &data, &["rollback", "prod", "--json"], &env);
    let r: serde_json::Value = serde_json::from_str(&ok(&o, "fuse rollback prod")).unwrap();
    assert_eq!(r["digest"], v.digests[0].as_str());
    assert_eq!(snaps().len(), 2);
    assert_eq!(r["deploy"]["upload"]["reused"], true);
    let r_ids = ids(&r);
    assert_eq!(targets(), r_ids);
    assert!(ids(&e3).iter().all(|i| state(i) == "terminated"));
}
