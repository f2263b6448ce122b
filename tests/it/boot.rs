//! Boot tests: the booted system proves itself by answering HTTP on a forwarded port, as an
//! unprivileged user, and by powering off with the app's exit code on the console.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn example_boots_with_plain_qemu_and_ovmf_and_answers_http() {
    let b = shared_image();
    let mut vm = Vm::boot(&b.image, 8080, &[]);
    let body = vm.get_until_ok("/", Duration::from_secs(240));
    let console = vm.console();
    let body = body.unwrap_or_else(|| panic!("no HTTP answer from the image; console:\n{console}"));
    assert!(body.starts_with("hello, world from uid "), "{body}");
    let uid: u32 = body.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the app runs as root");
    assert_eq!(uid, 1000);
    // The app exits with 3: the init reports it and powers the machine off.
    let _ = http_get(vm.port, "/exit?code=3");
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the VM did not power off; console:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("fuse-init: app exited with code 3"),
        "{console}"
    );
}

#[test]
fn fuse_run_injects_config_without_changing_the_image_or_printing_secrets() {
    let b = shared_image();
    let before = sha256_file(&b.image);
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("test.env");
    std::fs::write(
        &env,
        "# test environment\nGREETING=test-env\nDB_PASSWORD=s3cret-value\n",
    )
    .unwrap();
    let port = fuse::vm::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .arg("run")
        .arg(&b.image)
        .arg("--config")
        .arg(&env)
        .args(["-p", &format!("{port}:8080")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let console = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let c2 = console.clone();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("fuse run| {l}");
            c2.lock().unwrap().push_str(&l);
            c2.lock().unwrap().push('\n');
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut body = None;
    while std::time::Instant::now() < deadline && body.is_none() {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        body = http_get(port, "/").filter(|r| r.0 == 200).map(|r| r.1);
        std::thread::sleep(Duration::from_millis(500));
    }
    let body = body.unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "no answer via fuse run; console:\n{}",
            console.lock().unwrap()
        )
    });
    assert!(body.starts_with("hello, test-env from uid 1000"), "{body}");
    let _ = http_get(port, "/exit?code=7");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let console = console.lock().unwrap().clone();
    assert_eq!(
        status.code(),
        Some(7),
        "fuse run exits with the app's code; console:\n{console}"
    );
    assert!(
        !console.contains("s3cret-value"),
        "a config value was printed on the console"
    );
    assert_eq!(sha256_file(&b.image), before, "booting changed the image");
}
