//! Fuzzing of every reader of untrusted bytes, on stable Rust, as part of `cargo test`:
//! seeds written by fuse's own writers plus real Debian files (from the tests' download
//! cache and the host, when present), mutated and fed to the reader; a panic, a case past
//! its time limit or an allocation past its budget fails the test. Bounded by default (a
//! few seconds per target); see tests/common/fuzz_harness.rs for the knobs
//! (FUSE_FUZZ_CASES, FUSE_FUZZ_SECONDS, FUSE_FUZZ_SEED, FUSE_FUZZ_MEM_MB).

#[path = "common/fuzz_harness.rs"]
mod harness;

use fuse::format::{cpio, fat, gpt, squashfs, uki};
use fuse::tree::{Node, Tree};
use harness::{run, text};
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tests' shared download cache (filled by the integration tests), if present.
fn cache_blobs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuse-cache/sha256");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Up to `n` of the smallest cached blobs whose bytes start with `magic`, at most `max` bytes.
fn cached(magic: &[u8], max: u64, n: usize) -> Vec<Vec<u8>> {
    let mut found: Vec<(u64, PathBuf)> = cache_blobs()
        .into_iter()
        .filter_map(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            if len > max {
                return None;
            }
            let mut head = vec![0; magic.len()];
            use std::io::Read;
            std::fs::File::open(&p).ok()?.read_exact(&mut head).ok()?;
            (head == magic).then_some((len, p))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .take(n)
        .filter_map(|(_, p)| std::fs::read(p).ok())
        .collect()
}

fn sample_tree() -> Tree {
    let mut t = Tree::new();
    t.insert("etc/hostname", Node::file(b"fuse\n".to_vec(), 0o644))
        .unwrap();
    t.insert("usr/bin/app", Node::file(vec![0x7f; 5000], 0o755))
        .unwrap();
    t.insert(
        "usr/share/doc/app/README",
        Node::file(b"read me ".repeat(40), 0o644),
    )
    .unwrap();
    t.insert("usr/bin/link", Node::symlink("app")).unwrap();
    t.insert("dev/console", Node::char_dev(5, 1, 0o600))
        .unwrap();
    let mut d = Node::dir(0o750);
    d.uid = 1000;
    d.gid = 1000;
    d.mtime = 1_700_000_000;
    t.insert("var/lib/app", d).unwrap();
    t
}

fn squashfs_seeds() -> Vec<Vec<u8>> {
    let t = sample_tree();
    [
        squashfs::Compression::Gzip,
        squashfs::Compression::Xz,
        squashfs::Compression::Zstd,
    ]
    .into_iter()
    .map(|c| {
        squashfs::write(
            &t,
            &squashfs::Options {
                compression: c,
                block_size: 4096,
                mkfs_time: 1_700_000_000,
                threads: 0,
            },
        )
        .unwrap()
    })
    .collect()
}

fn fat_seed() -> Vec<u8> {
    let mut t = Tree::new();
    t.insert("EFI/BOOT/BOOTX64.EFI", Node::file(vec![0x4d; 3000], 0o644))
        .unwrap();
    t.insert(
        "fuse/image.json",
        Node::file(b"{\"name\":\"hello\"}".to_vec(), 0o644),
    )
    .unwrap();
    t.insert(
        "a long file name with spaces.txt",
        Node::file(b"x".to_vec(), 0o644),
    )
    .unwrap();
    fat::write(
        &t,
        &fat::Options {
            volume_label: "FUSE-ESP".into(),
            volume_id: 7,
            min_size: 0,
        },
    )
    .unwrap()
}

fn disk_seed() -> Vec<u8> {
    let esp = fat_seed();
    let sq = squashfs_seeds().remove(0);
    let guid = |b: u8| gpt::Guid::from_hash(&[b; 32]);
    let specs = vec![
        gpt::PartitionSpec {
            name: "fuse-esp".into(),
            type_guid: gpt::Guid::parse(gpt::ESP_TYPE).unwrap(),
            unique_guid: guid(1),
            attributes: 0,
            data: &esp,
        },
        gpt::PartitionSpec {
            name: "fuse-base".into(),
            type_guid: gpt::Guid::parse(gpt::LINUX_DATA_TYPE).unwrap(),
            unique_guid: guid(2),
            attributes: 1 << 60,
            data: &sq,
        },
    ];
    gpt::write_disk(guid(3), &specs).unwrap()
}

fn files(paths: &[&str]) -> Vec<Vec<u8>> {
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn with_fallback(mut v: Vec<Vec<u8>>, fallback: &[u8]) -> Vec<Vec<u8>> {
    if v.is_empty() {
        v.push(fallback.to_vec());
    }
    v
}

#[test]
fn fuzz_squashfs() {
    // Ours, plus the smallest real layers from the cache (written by earlier builds).
    let mut seeds = squashfs_seeds();
    seeds.extend(cached(b"hsqs", 256 << 10, 2));
    run("squashfs", seeds, |b| {
        let _ = squashfs::read(b);
    });
}

#[test]
fn fuzz_fat() {
    run(
        "fat",
        vec![fat_seed(), fuse::configdisk::write(b"A=1\n").unwrap()],
        |b| {
            let _ = fat::read(b);
        },
    );
}

#[test]
fn fuzz_gpt_and_whole_image_verification() {
    run("gpt", vec![disk_seed()], |b| {
        let _ = gpt::read_disk(b);
        let _ = fuse::inspect::verify::read(b, None);
        let _ = fuse::disk::read_meta(b);
        let _ = fuse::oci::chunks(b);
    });
}

#[test]
fn fuzz_uki_pe_reader() {
    let mut seeds = files(&["/usr/lib/systemd/boot/efi/linuxx64.efi.stub"]);
    // A minimal PE: MZ header pointing at a PE signature with no sections.
    let mut pe = vec![0u8; 512];
    pe[0..2].copy_from_slice(b"MZ");
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    seeds.push(pe);
    run("uki", seeds, |b| {
        let _ = uki::read_sections(b);
    });
}

#[test]
fn fuzz_deb_ar_tar() {
    let seeds = with_fallback(cached(b"!<arch>\n", 64 << 10, 3), b"!<arch>\n");
    run("deb", seeds, |b| {
        let _ = fuse::archive::deb::read_deb(b);
    });
}

#[test]
fn fuzz_cpio() {
    run("cpio", vec![cpio::write(&sample_tree()).unwrap()], |b| {
        let _ = cpio::read(b);
    });
}

/// Real index text from the cache: the first paragraphs of a Packages index.
fn packages_seed() -> Vec<u8> {
    if let Some(b) = cached(b"Package: ", u64::MAX, 1).pop() {
        let t = text(&b);
        let cut: String = t.split("\n\n").take(20).collect::<Vec<_>>().join("\n\n");
        return cut.into_bytes();
    }
    b"Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_1.0-1_amd64.deb\nSize: 100\nSHA256: 0000000000000000000000000000000000000000000000000000000000000000\nDepends: libc6 (>= 2.34), zlib1g | libz\n".to_vec()
}

#[test]
fn fuzz_packages_and_relations() {
    run("packages", vec![packages_seed()], |b| {
        let t = text(b);
        let _ = fuse::archive::packages::parse_packages(&t);
        let _ = fuse::archive::packages::parse_deb822(&t);
        let _ = fuse::archive::packages::parse_relations(&t);
    });
}

fn inrelease_seed() -> Option<Vec<u8>> {
    let named = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuse-cache/named");
    std::fs::read_dir(named)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("inrelease-"))
        .find_map(|e| std::fs::read(e.path()).ok())
        .or_else(|| cached(b"-----BEGIN PGP SIGNED MESSAGE-----", 4 << 20, 1).pop())
}

#[test]
fn fuzz_release() {
    let mut seeds = vec![format!(
        "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 Feb 2024 12:00:00 UTC\nValid-Until: Sat, 17 Feb 2024 12:00:00 +0100\nArchitectures: amd64\nComponents: main\nAcquire-By-Hash: yes\nSHA256:\n {} 1234 main/binary-amd64/Packages.xz\n",
        "ab".repeat(32)
    )
    .into_bytes()];
    if let Some(r) = inrelease_seed() {
        // The signed text alone: the parser's input after verification.
        let t = text(&r);
        if let Some(body) = t.split("\n\n").nth(1) {
            let body = body
                .split("-----BEGIN PGP SIGNATURE")
                .next()
                .unwrap_or(body);
            seeds.push(
                body.lines()
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
            );
        }
    }
    run("release", seeds, |b| {
        let t = text(b);
        let _ = fuse::archive::release::parse_release(&t);
        for line in t
            .lines()
            .filter(|l| l.starts_with("Date") || l.starts_with("Valid"))
        {
            let _ = fuse::archive::release::parse_date(line.split_once(':').map_or("", |x| x.1));
        }
    });
}

#[test]
fn fuzz_inrelease_signature_and_keyring() {
    let keyring = std::fs::read("/usr/share/keyrings/debian-archive-keyring.gpg").ok();
    let seeds = with_fallback(
        inrelease_seed().into_iter().chain(keyring.clone()).collect(),
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: x\n-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n",
    );
    static RING: std::sync::OnceLock<Option<fuse::archive::release::Keyring>> =
        std::sync::OnceLock::new();
    RING.get_or_init(|| keyring.and_then(|k| fuse::archive::release::Keyring::from_bytes(&k).ok()));
    run("inrelease", seeds, |b| {
        let _ = fuse::archive::release::Keyring::from_bytes(b);
        if let Some(ring) = RING.get().and_then(|r| r.as_ref()) {
            let opts = fuse::archive::release::VerifyOptions {
                now_unix: 1_700_000_000,
                allow_unsigned: false,
                allow_expired: true,
            };
            let _ = fuse::archive::release::verify_inrelease(b, ring, &opts);
        }
    });
}

#[test]
fn fuzz_contents_index() {
    let seed = b"usr/lib/x86_64-linux-gnu/libz.so.1.2.13    libs/zlib1g\nusr/lib/x86_64-linux-gnu/libssl.so.3 libs/libssl3,libdevel/libssl-dev\nusr/bin/true utils/coreutils\n";
    run("contents", vec![seed.to_vec()], |b| {
        let _ = fuse::resolve::elf::contents_libraries(&text(b));
    });
}

#[test]
fn fuzz_elf_reader() {
    let seeds = with_fallback(
        files(&["/bin/true", "/usr/lib/x86_64-linux-gnu/libz.so.1"]),
        b"\x7fELF\x02\x01",
    );
    run("elf", seeds, |b| {
        let _ = fuse::resolve::elf::dynamic(b);
    });
}

#[test]
fn fuzz_manifest() {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("fuse.toml")).ok())
        .collect();
    run("manifest", seeds, |b| {
        let _ = fuse::manifest::parse(&text(b), Path::new("fuse.toml"));
    });
}

#[test]
fn fuzz_env_files() {
    let seeds = vec![
        b"GREETING=hello\n# comment\nSECRET=a b c\nEMPTY=\n".to_vec(),
        b"A=1\r\nB=\"quoted\"\n".to_vec(),
    ];
    run("envfile", seeds, |b| {
        let _ = fuse::envfile::check(b);
        let _ = fuse::configdisk::read(b);
    });
}

#[test]
fn fuzz_lock() {
    let seeds = with_fallback(
        files(&["/tmp/plan-cmp/hello/fuse.lock"])
            .into_iter()
            .chain(
                std::fs::read_dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
                    .into_iter()
                    .flatten()
                    .filter_map(|e| std::fs::read(e.ok()?.path().join("app/fuse.lock")).ok()),
            )
            .take(3)
            .collect(),
        b"version = 1\n",
    );
    run("lock", seeds, |b| {
        let _ = fuse::resolve::lock::Lock::parse(&text(b), Path::new("fuse.lock"));
    });
}

#[test]
fn fuzz_image_json() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let seeds = with_fallback(
        files(&[tmp
            .join("shared-build/app/fuse-out/hello-1.0.0.json")
            .to_str()
            .unwrap()]),
        b"{\"format\":1,\"name\":\"hello\",\"version\":\"1.0.0\",\"layers\":[]}",
    );
    run("image-json", seeds, |b| {
        let _ = fuse::disk::parse_meta(b);
    });
}

#[test]
fn fuzz_oci_manifest_and_auth() {
    let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"{}","config":{{"mediaType":"{}","digest":"{}","size":100}},"layers":[{{"mediaType":"{}","digest":"{}","size":4096,"annotations":{{"org.opencontainers.image.title":"fuse-esp"}}}}],"annotations":{{"dev.fuse.image.digest":"{}"}}}}"#,
        fuse::oci::MANIFEST_TYPE,
        fuse::oci::ARTIFACT_TYPE,
        fuse::oci::CONFIG_TYPE,
        d(1),
        fuse::oci::CHUNK_TYPE,
        d(2),
        d(3)
    );
    let seeds = vec![
        manifest.into_bytes(),
        br#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#.to_vec(),
        br#"{"token":"abc","access_token":"def","expires_in":300}"#.to_vec(),
        br#"{"auths":{"registry.example":{"auth":"YWxpY2U6czNjcmV0"}}}"#.to_vec(),
    ];
    run("oci", seeds, |b| {
        let _ = fuse::oci::parse_manifest(b);
        let t = text(b);
        let _ = fuse::oci::auth::parse_challenge(&t);
        let _ = fuse::oci::auth::parse_token(b);
        let _ = fuse::oci::auth::from_docker_config(&t, "registry.example");
        let _ = fuse::oci::Reference::parse(&t);
    });
}

#[test]
fn fuzz_jar_zip_reader() {
    // The smallest real jars on the host (Tomcat and friends are installed for the tests).
    let mut jars: Vec<(u64, PathBuf)> = std::fs::read_dir("/usr/share/java")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let m = std::fs::metadata(&p).ok()?;
            (p.extension()? == "jar" && m.len() < 32 << 10).then_some((m.len(), p))
        })
        .collect();
    jars.sort();
    let seeds = with_fallback(
        jars.into_iter()
            .take(3)
            .filter_map(|(_, p)| std::fs::read(p).ok())
            .collect(),
        b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    );
    run("jar", seeds, |b| {
        let _ = fuse::runtimes::jar_main_class(b);
        let _ = fuse::runtimes::jar_class_path(b);
    });
}

#[test]
fn fuzz_export_wrappers() {
    // Every wrapper fuse reads (issue 25: VMDK, qcow2, VHD, OVA, GCE tar.gz), around a small
    // GPT-looking disk whose primary header names its last sector as the backup's.
    let mut raw = vec![0u8; 256 << 10];
    raw[..64].fill(7);
    raw[512..520].copy_from_slice(b"EFI PART");
    raw[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
    let last = (raw.len() / 512 - 1) as u64;
    raw[512 + 32..512 + 40].copy_from_slice(&last.to_le_bytes());
    raw[100_000] = 1;
    let d = [5u8; 32];
    use fuse::export::{gce, ova, qcow2, vhd, vmdk};
    let seeds = vec![
        qcow2::write(&raw).unwrap(),
        vmdk::write_sparse(&raw, "x.vmdk", &d).unwrap(),
        vmdk::write_stream(&raw, "x.vmdk", &d).unwrap(),
        vhd::write(&raw, &d).unwrap(),
        ova::write(&raw, "hello-1.0.0", &d).unwrap(),
        gce::write(&raw).unwrap(),
    ];
    run("export-wrappers", seeds, |b| {
        let _ = fuse::export::open(b.to_vec());
    });
}

/// Separates the layers of one fuzz input for `oci::container::flatten`.
const LAYER_SEP: &[u8] = b"\n--fuse-layer--\n";

fn layer_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn container_layer_seeds() -> Vec<Vec<u8>> {
    use std::io::{Read, Write};
    use tar::EntryType as T;
    let lower = layer_tar(&[
        ("./", T::Directory, b"", ""),
        ("etc/", T::Directory, b"", ""),
        ("etc/passwd", T::Regular, b"root:x:0:0::/root:/bin/sh\n", ""),
        ("usr/bin/python3", T::Regular, &[0x7f; 300], ""),
        ("usr/bin/python", T::Link, b"", "usr/bin/python3"),
        ("bin", T::Symlink, b"", "usr/bin"),
        ("app/old.py", T::Regular, b"print(1)\n", ""),
        ("var/cache/x", T::Regular, b"x", ""),
    ]);
    let upper = layer_tar(&[
        ("app/", T::Directory, b"", ""),
        ("app/.wh..wh..opq", T::Regular, b"", ""),
        ("app/new.py", T::Regular, b"print(2)\n", ""),
        ("var/.wh.cache", T::Regular, b"", ""),
        ("usr/bin/python3", T::Regular, &[0x7e; 200], ""),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&upper).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&upper[..], 1).unwrap();
    let join = |parts: &[&[u8]]| parts.join(LAYER_SEP);
    // A bomb: a small tar followed by 256 MiB of zeros, zstd-compressed to a few KiB.
    let mut bomb = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut bomb, 1).unwrap();
    enc.write_all(&layer_tar(&[("f", T::Regular, b"f", "")]))
        .unwrap();
    std::io::copy(&mut std::io::repeat(0).take(256 << 20), &mut enc).unwrap();
    enc.finish().unwrap();
    vec![
        join(&[&lower, &upper]),
        join(&[&lower, &gz]),
        join(&[&lower, &zst]),
        bomb,
    ]
}

#[test]
fn fuzz_container_layers() {
    run("container-layers", container_layer_seeds(), |b| {
        let parts: Vec<&[u8]> = split_layers(b);
        let digests: Vec<String> = (0..parts.len()).map(|i| format!("sha256:{i}")).collect();
        let layers: Vec<fuse::oci::container::LayerInput> = parts
            .iter()
            .zip(&digests)
            .map(|(p, d)| fuse::oci::container::LayerInput {
                digest: d,
                media_type: "application/vnd.oci.image.layer.v1.tar",
                bytes: p,
                diff_id: None,
            })
            .collect();
        let limits = fuse::oci::container::Limits {
            max_total_bytes: 16 << 20,
            max_entries: 4096,
        };
        let _ = fuse::oci::container::flatten(&layers, 2, &limits);
    });
}

/// The layers of a fuzz input (at most 4).
fn split_layers(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = b;
    while out.len() < 3 {
        match rest.windows(LAYER_SEP.len()).position(|w| w == LAYER_SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + LAYER_SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

#[test]
fn fuzz_container_config_and_user() {
    let seeds = vec![
        br#"{"architecture":"amd64","os":"linux","config":{"User":"app:staff","Env":["PATH=/usr/bin","A=b=c"],"Entrypoint":["/usr/bin/python3","app.py"],"Cmd":["--port","8080"],"WorkingDir":"/srv","ExposedPorts":{"8080/tcp":{},"53/udp":{},"9000":{}},"StopSignal":"SIGTERM","Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#.to_vec(),
        br#"{"config":{"Cmd":"/bin/sh","Env":null,"Labels":null,"ExposedPorts":null},"container_config":{},"rootfs":{"diff_ids":null}}"#.to_vec(),
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".to_vec(),
    ];
    run("container-config", seeds, |b| {
        let _ = fuse::oci::container::parse_config(b);
        let t = text(b);
        for user in [
            "app",
            "1000",
            "app:staff",
            "1000:app",
            t.lines().next().unwrap_or(""),
        ] {
            let _ = fuse::oci::container::resolve_user(Some(user), Some(b), Some(b));
        }
        let _ = fuse::oci::container::resolve_program(&t, Some(&t), |p| p.len() % 3 == 0);
    });
}
