//! Boot-time configuration: one image, booted twice with two different configurations, one
//! through QEMU's fw_cfg, one on a config disk (FAT, label FUSECONFIG) attached as a second
//! virtio disk. The app reports each value over HTTP; the image's digest never changes.

use crate::support::*;
use std::time::Duration;

fn boot_and_greet(image: &std::path::Path, extra: &[String], secret: &str) -> (String, String) {
    let mut vm = Vm::boot(image, 8080, extra);
    let body = vm.get_until_ok("/", Duration::from_secs(240));
    let body = body.unwrap_or_else(|| panic!("no HTTP answer; console:\n{}", vm.console()));
    let _ = http_get(vm.port, "/exit?code=0");
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "no power-off:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        !console.contains(secret),
        "a config value was printed:\n{console}"
    );
    (body, console)
}

#[test]
fn one_image_two_configs_via_fw_cfg_and_config_disk() {
    let b = shared_image();
    let before = sha256_file(&b.image);
    assert_eq!(before, b.digest);
    let dir = tempfile::tempdir().unwrap();
    let env_a = dir.path().join("a.env");
    let env_b = dir.path().join("b.env");
    std::fs::write(&env_a, "GREETING=from-fw-cfg\nAPI_TOKEN=secret-aaa\n").unwrap();
    std::fs::write(
        &env_b,
        "# staging\nGREETING=from-config-disk\nAPI_TOKEN=secret-bbb\n",
    )
    .unwrap();
    let disk = dir.path().join("config.img");
    let out = fuse(
        &[
            "config-disk",
            env_b.to_str().unwrap(),
            "-o",
            disk.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("secret-bbb"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (body, console) = boot_and_greet(
        &b.image,
        &[
            "-fw_cfg".into(),
            format!("name=opt/fuse/env,file={}", env_a.display()),
        ],
        "secret-aaa",
    );
    assert!(
        body.starts_with("hello, from-fw-cfg from uid 1000"),
        "{body}"
    );
    assert!(
        console.contains("config from fw_cfg opt/fuse/env: 2 variables (API_TOKEN, GREETING)"),
        "{console}"
    );

    let (body, console) = boot_and_greet(
        &b.image,
        &[
            "-drive".into(),
            format!("if=virtio,format=raw,readonly=on,file={}", disk.display()),
        ],
        "secret-bbb",
    );
    assert!(
        body.starts_with("hello, from-config-disk from uid 1000"),
        "{body}"
    );
    assert!(
        console.contains("config from config disk /dev/vdb (FUSECONFIG)"),
        "{console}"
    );
    // Under QEMU the DMI vendor is QEMU: the metadata service is never asked.
    assert!(!console.contains("user data"), "{console}");

    assert_eq!(sha256_file(&b.image), before, "booting changed the image");
}
