//! Fuzzing of every parser PID 1 runs on bytes from outside the image, with the harness of
//! fuse's own fuzz tests (tests/common/fuzz_harness.rs, included by path): DHCP replies,
//! the config disk's FAT boot sector, the fw_cfg / config-disk / user-data env file,
//! boot.json, the metadata service's HTTP answers (EC2/GCE user data), sysfs uevents and
//! /proc/mounts. A panic here would be a kernel panic: every target must return.
//! Knobs: FUSE_FUZZ_CASES, FUSE_FUZZ_SECONDS, FUSE_FUZZ_SEED, FUSE_FUZZ_MEM_MB.

#[path = "../../tests/common/fuzz_harness.rs"]
mod harness;

use crate::net::dhcp::{self, Client, Lease, Message};
use harness::run;
use std::net::Ipv4Addr;

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;

/// A DHCP ACK as a server sends it: every option the init reads, in the options field and
/// (overloaded) in `file`.
fn dhcp_seeds() -> Vec<Vec<u8>> {
    let mut m = Message::empty();
    m.op = 2;
    m.htype = 1;
    m.hlen = 6;
    m.xid = 0x1234_5678;
    m.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
    m.siaddr = Ipv4Addr::new(10, 0, 2, 2);
    m.chaddr[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut ack = m.clone();
    ack.options = vec![
        (53, vec![5]),
        (54, vec![10, 0, 2, 2]),
        (51, 86400u32.to_be_bytes().to_vec()),
        (1, vec![255, 255, 255, 0]),
        (3, vec![10, 0, 2, 2, 10, 0, 2, 3]),
        (6, vec![10, 0, 2, 3]),
        (12, b"guest".to_vec()),
        (15, b"example.internal".to_vec()),
        (26, 1500u16.to_be_bytes().to_vec()),
        // 0.0.0.0/0 via 10.0.2.2; 10.1.0.0/16 via 10.0.2.2; a /32 host route.
        (
            121,
            vec![
                0, 10, 0, 2, 2, 16, 10, 1, 10, 0, 2, 2, 32, 10, 0, 2, 9, 0, 0, 0, 0,
            ],
        ),
    ];
    let mut offer = m.clone();
    offer.options = vec![(53, vec![2]), (54, vec![10, 0, 2, 2])];
    let mut nak = m.clone();
    nak.options = vec![(53, vec![6]), (56, b"no address for you".to_vec())];
    let mut overloaded = ack.clone();
    overloaded.options.push((52, vec![3]));
    overloaded.file[..6].copy_from_slice(&[12, 3, b'a', b'b', b'c', 255]);
    overloaded.sname[..7].copy_from_slice(&[15, 4, b'x', b'.', b'y', b'z', 255]);
    vec![
        ack.encode(),
        offer.encode(),
        nak.encode(),
        overloaded.encode(),
    ]
}

fn dhcp_reply(b: &[u8]) {
    if let Ok(m) = Message::decode(b) {
        let _ = m.message_type();
        if let Ok(l) = Lease::from_message(&m) {
            let _ = l.route_plan();
            let _ = l.prefix();
            let _ = l.on_link(Ipv4Addr::new(10, 0, 2, 2));
            let _ = crate::net::describe("eth0", &l);
            let _ = crate::net::resolv_conf(&l.dns, l.domain.as_deref());
            let name = crate::net::choose_hostname(l.hostname.as_deref(), "fallback");
            let _ = crate::net::hosts_content("127.0.0.1 localhost\n", &name);
        }
        // As the client that asked: its xid and address are the reply's own.
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&m.chaddr[..6]);
        let c = Client {
            xid: m.xid,
            mac,
            hostname: None,
        };
        let _ = c.classify(b);
    }
    let _ = dhcp::parse_options(b);
    let _ = dhcp::parse_classless_routes(b);
}

#[test]
fn fuzz_dhcp_replies() {
    run("init-dhcp", dhcp_seeds(), dhcp_reply);
}

/// A FAT16 boot sector as mkfs.fat writes it, labelled FUSECONFIG, and a FAT32 one.
fn fat_seeds() -> Vec<Vec<u8>> {
    let mut s = vec![0u8; 512];
    s[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
    s[3..11].copy_from_slice(b"mkfs.fat");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[13] = 4;
    s[17..19].copy_from_slice(&512u16.to_le_bytes());
    s[22..24].copy_from_slice(&8u16.to_le_bytes());
    s[38] = 0x29;
    s[43..54].copy_from_slice(b"FUSECONFIG ");
    s[510] = 0x55;
    s[511] = 0xaa;
    let mut f32 = s.clone();
    f32[17..19].copy_from_slice(&0u16.to_le_bytes());
    f32[22..24].copy_from_slice(&0u16.to_le_bytes());
    f32[38] = 0;
    f32[66] = 0x29;
    f32[71..82].copy_from_slice(b"FUSECONFIG ");
    vec![s, f32]
}

fn config_disk(b: &[u8]) {
    let _ = crate::configdisk::fat_label(b);
    let text = String::from_utf8_lossy(b);
    let ev = crate::block::parse_uevent(&text);
    if let Some(d) = &ev.devname {
        let _ = crate::block::valid_devname(d);
    }
    let _ = crate::configdisk::candidates(&[("vdb".to_string(), text.into_owned())]);
}

#[test]
fn fuzz_config_disk_fat_and_uevents() {
    let mut seeds = fat_seeds();
    seeds.push(b"MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n".to_vec());
    run("init-configdisk", seeds, config_disk);
}

fn env_file(b: &[u8]) {
    let f = crate::app::parse_env_file(b);
    let env = crate::app::build_env("/app", &Default::default(), &f.vars);
    let _ = crate::cloud::is_env_file(b);
    let _ = env.len();
}

#[test]
fn fuzz_fw_cfg_and_config_disk_env_files() {
    let seeds = vec![
        b"GREETING=hello\r\n# comment\nPORT='8080'\nQUOTED=\"a b\"\n\nBAD LINE\n".to_vec(),
        b"A=1\nA=2\nJAVA_OPTS=-Xmx64m -Dx=y\n".to_vec(),
    ];
    run("init-envfile", seeds, env_file);
}

const BOOT_JSON: &str = r#"{
  "format": 1,
  "hostname": "hello",
  "modules": ["/lib/modules/6.1.0-28-amd64/kernel/drivers/virtio/virtio.ko"],
  "layers": ["base", "app"],
  "fs_type": "squashfs",
  "verity": {
    "base": {"partuuid": "0b6f4a2c-1d3e-4f50-8a61-72839405a6b7", "data_blocks": 1, "hash_start_block": 2,
             "root_hash": "5ab5c7f2d4b6a8e0c1d3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5", "salt": "00ff"},
    "app": {"partuuid": "1c7f5b3d-2e4f-4061-9b72-8394a516b7c8", "data_blocks": 65, "hash_start_block": 66,
            "root_hash": "6bc6d8f3e5c7b9f1d2e4f6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6", "salt": "11"}
  },
  "app": {
    "argv": ["/app/hello", "--flag"],
    "workdir": "/app",
    "env": {"GREETING": "world", "PORT": "8080", "ARGS": "a b"},
    "env_args": {"var": "ARGS", "at": 1},
    "uid": 1000,
    "gid": 1000,
    "stop_timeout": 5,
    "writable": ["/app/logs"]
  }
}"#;

fn boot_json(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    if let Ok(c) = crate::config::parse(&text) {
        let env = crate::app::build_env(&c.app.workdir, &c.app.env, &Default::default());
        let _ = crate::app::with_env_args(&c.app, &env);
        let _ = crate::mounts::lowerdir(&c.layers);
        let _ = crate::mounts::overlay_options(&c.layers);
        for l in &c.layers {
            let _ = crate::mounts::layer_dir(l);
        }
    }
}

#[test]
fn fuzz_boot_json() {
    // The documented example parses (the fuzzing starts from a valid document).
    assert!(crate::config::parse(BOOT_JSON).is_ok());
    run(
        "init-bootjson",
        vec![BOOT_JSON.as_bytes().to_vec()],
        boot_json,
    );
}

fn metadata_answer(b: &[u8]) {
    if let Ok(r) = crate::cloud::parse_response(b) {
        let _ = r.header("content-type");
        if crate::cloud::is_env_file(&r.body) {
            let _ = crate::app::parse_env_file(&r.body);
        }
    }
}

#[test]
fn fuzz_ec2_gce_user_data_answers() {
    let seeds = vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 14\r\n\r\nGREETING=cloud".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nMetadata-Flavor: Google\r\n\r\n5\r\nA=1\nB\r\n3;x=y\r\n=2\n\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 56\r\n\r\nAQAEAKxJx2u0DWOGqxDu7QyJh2F8pPrQJ9vL0QhAAx0bW9ja190b2tlbg==".to_vec(),
    ];
    run("init-userdata", seeds, metadata_answer);
}

fn proc_mounts(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let points = crate::mounts::mount_points(&text);
    let _ = crate::mounts::teardown_order(&points);
}

#[test]
fn fuzz_proc_mounts() {
    let seeds = vec![b"proc /proc proc rw 0 0\noverlay / overlay rw,lowerdir=/run/fuse/layers/app:/run/fuse/layers/base 0 0\ntmpfs /run/with\\040space tmpfs rw 0 0\n".to_vec()];
    run("init-mounts", seeds, proc_mounts);
}
