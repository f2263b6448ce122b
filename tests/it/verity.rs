//! Verified boot end to end: a tampered layer (one flipped byte, or another build's app
//! layer in its place) never answers: the machine stops on it (dm-verity verifies blocks
//! as they are read and halts the kernel on a corrupted one); a second disk
//! with partitions of the same names takes no layer's place; Secure Boot
//! signing (sbverify accepts it, two signed builds are byte-identical, a key that does not
//! match its certificate fails before anything is written, inspect and the ledger name the
//! signer); Debian's Secure Boot OVMF with the snakeoil key boots the snakeoil-signed image
//! and refuses the unsigned one and one signed by another key.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
const SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const SNAKEOIL_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";

/// Boots `image` and requires: no HTTP answer ever, and the machine stopped because of
/// `layer`: either the init's FATAL line naming it (it powers off), or dm-verity finding
/// a corrupted block on that layer's partition (blocks are verified as they are read) and
/// the kernel halting on it (`panic_on_corruption`, `panic=0`: no restart).
fn expect_fatal(image: &Path, layer: &str) {
    let mut vm = Vm::boot(image, 8080, &[]);
    let stopped = vm.wait_stop_unanswered(
        &["Kernel panic - not syncing", "fuse-init: FATAL: "],
        "/",
        Duration::from_secs(300),
    );
    let console = vm.console();
    assert!(
        stopped,
        "the VM did not stop by itself; console:\n{console}"
    );
    let fatal = console.contains(&format!(
        "fuse-init: FATAL: layer {layer} failed verification"
    ));
    if !fatal {
        // The layer's partition (major:minor), from the init's line for it.
        let majmin = console
            .lines()
            .find_map(|l| {
                let rest = l.split(&format!("fuse-init: layer {layer}: ")).nth(1)?;
                let inner = rest.split('(').nth(1)?;
                Some(inner.split(',').next()?.to_string())
            })
            .unwrap_or_else(|| panic!("no line for layer {layer}: {console}"));
        assert!(
            console.contains(&format!("verity: {majmin}: data block"))
                || console.contains(&format!("verity: {majmin}: metadata block")),
            "no dm-verity corruption on {majmin} (layer {layer}): {console}"
        );
        assert!(
            console.contains("Kernel panic - not syncing: dm-verity device corrupted"),
            "{console}"
        );
        // Halted, not rebooting: no second firmware/kernel start.
        std::thread::sleep(Duration::from_secs(3));
        let again = vm.console();
        assert_eq!(
            again.matches("fuse-init: starting (fuse-init").count(),
            1,
            "the machine started again: {again}"
        );
    }
    assert!(
        !console.contains("fuse-init: app exited"),
        "the app ran to its end: {console}"
    );
    assert!(http_get(vm.port, "/").is_none());
}

#[test]
fn a_tampered_app_layer_never_answers_and_powers_off() {
    let good = shared_image();
    let disk = std::fs::read(&good.image).unwrap();
    let meta = fuse::disk::parse_meta(&std::fs::read(&good.json).unwrap()).unwrap();
    let app_meta = meta.layers.iter().find(|l| l.name == "app").unwrap();
    assert!(
        app_meta.verity.is_some(),
        "the app layer has no verity tree"
    );
    let app = partition(&disk, "fuse-app");
    let dir = tempfile::tempdir().unwrap();

    // One byte flipped in the middle of the app layer's file system.
    let flipped = dir.path().join("flipped.img");
    let mut bytes = disk.clone();
    bytes[app.start + app_meta.size as usize / 2] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    expect_fatal(&flipped, "app");

    // Another build's app layer (a valid squashfs with its own valid hash tree, other code)
    // written over this image's app partition.
    let other_dir = dir.path().join("other");
    let other_app = example_app(&other_dir);
    let mut bin = std::fs::OpenOptions::new()
        .append(true)
        .open(other_app.join("hello"))
        .unwrap();
    std::io::Write::write_all(&mut bin, b"another build of the app").unwrap();
    drop(bin);
    let out = fuse(&["build", other_app.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let other = std::fs::read(other_app.join("fuse-out/hello-1.0.0.img")).unwrap();
    let other_part = &other[partition(&other, "fuse-app")];
    let mut bytes = disk.clone();
    let n = other_part.len().min(app.len());
    bytes[app.start..app.start + n].copy_from_slice(&other_part[..n]);
    assert_ne!(bytes, disk);
    let swapped = dir.path().join("swapped.img");
    std::fs::write(&swapped, &bytes).unwrap();
    expect_fatal(&swapped, "app");

    // A second disk whose partitions carry the layers' names (the other build's image, its
    // ESP zeroed so the firmware cannot boot it) cannot take a layer's place: the init
    // finds layers by partition GUID, and the image boots and answers as itself.
    let mut decoy = other.clone();
    let esp = partition(&other, "fuse-esp");
    decoy[esp].fill(0);
    let decoy_path = dir.path().join("decoy.img");
    std::fs::write(&decoy_path, &decoy).unwrap();
    let extra = [
        "-drive".to_string(),
        format!(
            "if=virtio,format=raw,readonly=on,file={}",
            decoy_path.display()
        ),
    ];
    let mut vm = Vm::boot(&good.image, 8080, &extra);
    let body = vm.get_until_ok("/", Duration::from_secs(300));
    let console = vm.console();
    assert!(
        body.is_some(),
        "no answer with a decoy second disk; console:\n{console}"
    );
    assert!(!console.contains("FATAL"), "{console}");
}

/// Keys for the signing tests: Debian's snakeoil key decrypted (passphrase `snakeoil`), and
/// another self-signed pair.
struct Keys {
    _dir: tempfile::TempDir,
    snakeoil_key: PathBuf,
    other_key: PathBuf,
    other_cert: PathBuf,
}

fn keys() -> Option<&'static Keys> {
    static K: OnceLock<Option<Keys>> = OnceLock::new();
    K.get_or_init(|| {
        if !require_tool("openssl")
            || !require(Path::new(SNAKEOIL_KEY).is_file(), "ovmf's snakeoil key")
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let snakeoil_key = dir.path().join("snakeoil.key");
        let st = Command::new("openssl")
            .args([
                "pkey",
                "-in",
                SNAKEOIL_KEY,
                "-passin",
                "pass:snakeoil",
                "-out",
            ])
            .arg(&snakeoil_key)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "openssl pkey could not decrypt the snakeoil key"
        );
        let other_key = dir.path().join("other.key");
        let other_cert = dir.path().join("other.pem");
        let st = Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .args(["-subj", "/CN=not the platform key"])
            .arg("-keyout")
            .arg(&other_key)
            .arg("-out")
            .arg(&other_cert)
            .output()
            .unwrap();
        assert!(st.status.success());
        Some(Keys {
            _dir: dir,
            snakeoil_key,
            other_key,
            other_cert,
        })
    })
    .as_ref()
}

/// The example built signed, in `dir`, by flags or (env) by FUSE_SIGN_KEY/FUSE_SIGN_CERT.
fn build_signed(dir: &Path, key: &Path, cert: &Path, by_env: bool) -> (PathBuf, String) {
    let app = example_app(dir);
    let out = if by_env {
        fuse(
            &["build", app.to_str().unwrap()],
            &[
                ("FUSE_SIGN_KEY", key.to_str().unwrap()),
                ("FUSE_SIGN_CERT", cert.to_str().unwrap()),
            ],
        )
    } else {
        fuse(
            &[
                "build",
                app.to_str().unwrap(),
                "--sign-key",
                key.to_str().unwrap(),
                "--sign-cert",
                cert.to_str().unwrap(),
            ],
            &[],
        )
    };
    assert!(out.status.success(), "signed build: {}", text(&out.stderr));
    let digest = text(&out.stdout).lines().last().unwrap_or("").to_string();
    (app.join("fuse-out/hello-1.0.0.img"), digest)
}

struct Signed {
    _dir: tempfile::TempDir,
    snakeoil: PathBuf,
    other: PathBuf,
}

fn signed() -> Option<&'static Signed> {
    static S: OnceLock<Option<Signed>> = OnceLock::new();
    S.get_or_init(|| {
        let k = keys()?;
        let dir = tempfile::tempdir().unwrap();
        let (snakeoil, d1) = build_signed(
            &dir.path().join("a"),
            &k.snakeoil_key,
            Path::new(SNAKEOIL_CERT),
            false,
        );
        let (_, d2) = build_signed(
            &dir.path().join("b"),
            &k.snakeoil_key,
            Path::new(SNAKEOIL_CERT),
            true,
        );
        assert_eq!(d1, d2, "two signed builds with the same key differ");
        assert_ne!(
            d1,
            shared_image().digest,
            "signing did not change the image"
        );
        let (other, _) = build_signed(&dir.path().join("c"), &k.other_key, &k.other_cert, false);
        Some(Signed {
            _dir: dir,
            snakeoil,
            other,
        })
    })
    .as_ref()
}

#[test]
fn signed_builds_are_identical_verify_with_sbverify_and_inspect_names_the_signer() {
    let Some(s) = signed() else { return };
    let k = keys().unwrap();
    let disk = std::fs::read(&s.snakeoil).unwrap();
    let uki = fuse::disk::read_esp_file(&disk, fuse::disk::ESP_BOOT_PATH).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let efi = dir.path().join("BOOTX64.EFI");
    std::fs::write(&efi, &uki).unwrap();
    if require_tool("sbverify") {
        let ok = Command::new("sbverify")
            .args(["--cert", SNAKEOIL_CERT])
            .arg(&efi)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "sbverify: {}{}",
            text(&ok.stdout),
            text(&ok.stderr)
        );
        let wrong = Command::new("sbverify")
            .arg("--cert")
            .arg(&k.other_cert)
            .arg(&efi)
            .output()
            .unwrap();
        assert!(
            !wrong.status.success(),
            "sbverify accepted the wrong certificate"
        );
    }

    // inspect: signer, fingerprint, verified; --json carries it.
    let out = fuse(&["inspect", s.snakeoil.to_str().unwrap(), "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sig = &j["secure_boot"][0];
    assert!(
        sig["signer"]["subject"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("snakeoil"),
        "{sig}"
    );
    assert_eq!(sig["problems"].as_array().unwrap().len(), 0, "{sig}");
    let fp = sig["signer"]["fingerprint"].as_str().unwrap().to_string();
    let pem = std::fs::read_to_string(SNAKEOIL_CERT).unwrap();
    let der = Command::new("openssl")
        .args(["x509", "-in", SNAKEOIL_CERT, "-outform", "DER"])
        .output()
        .unwrap()
        .stdout;
    assert!(pem.contains("CERTIFICATE"));
    assert_eq!(fp, fuse::digest::sha256_hex(&der));
    assert_eq!(j["metadata"]["boot"]["signer"]["fingerprint"], fp.as_str());
    for l in j["metadata"]["layers"].as_array().unwrap() {
        assert_eq!(l["verity"]["root_hash"].as_str().unwrap().len(), 64, "{l}");
    }
    let human = fuse(&["inspect", s.snakeoil.to_str().unwrap()], &[]);
    let human = text(&human.stdout);
    assert!(
        human.contains("signed by") && human.contains(&fp),
        "{human}"
    );
    assert!(human.contains("signature verified"), "{human}");
    let unsigned = text(&fuse(&["inspect", shared_image().image.to_str().unwrap()], &[]).stdout);
    assert!(unsigned.contains("unsigned"), "{unsigned}");

    // promote records the signer's fingerprint in the ledger.
    let project = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = fuse_in(
        project.path(),
        data.path(),
        &["promote", s.snakeoil.to_str().unwrap(), "test"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ledger = std::fs::read_to_string(data.path().join("ledger.jsonl")).unwrap();
    assert!(
        ledger.contains(&format!("\"signer\":\"sha256:{fp}\"")),
        "{ledger}"
    );

    // A key that does not match the certificate: an error before anything is written.
    let bad = tempfile::tempdir().unwrap();
    let app = example_app(bad.path());
    let out = fuse(
        &[
            "build",
            app.to_str().unwrap(),
            "--sign-key",
            k.other_key.to_str().unwrap(),
            "--sign-cert",
            SNAKEOIL_CERT,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert!(!app.join("fuse-out").exists() && !app.join("fuse.lock").exists());
}

/// Boots under the Secure Boot firmware with the snakeoil key enrolled.
fn secure_boot(image: &Path) -> Vm {
    Vm::boot_firmware(
        image,
        8080,
        &[
            "-machine".into(),
            "q35,smm=on".into(),
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
        ],
        SECBOOT_CODE,
        SNAKEOIL_VARS,
    )
}

fn expect_refused(image: &Path) {
    let mut vm = secure_boot(image);
    let refused = vm.wait_console("Access Denied", Duration::from_secs(240));
    let console = vm.console();
    assert!(
        refused,
        "the firmware did not refuse it; console:\n{console}"
    );
    assert!(!console.contains("fuse-init"), "{console}");
    assert!(http_get(vm.port, "/").is_none());
}

#[test]
fn secure_boot_firmware_boots_the_signed_image_and_refuses_the_others() {
    let Some(s) = signed() else { return };
    if !require(
        Path::new(SECBOOT_CODE).is_file() && Path::new(SNAKEOIL_VARS).is_file(),
        "ovmf's Secure Boot firmware",
    ) {
        return;
    }
    let mut vm = secure_boot(&s.snakeoil);
    let body = vm.get_until_ok("/", Duration::from_secs(300));
    let console = vm.console();
    let body =
        body.unwrap_or_else(|| panic!("the signed image did not answer; console:\n{console}"));
    assert!(body.starts_with("hello, world"), "{body}");
    drop(vm);
    expect_refused(&shared_image().image);
    expect_refused(&s.other);
}
