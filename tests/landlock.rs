//! Landlock: once its machine is set up, Tsubame can open what it was
//! configured with and nothing else. The main thread's attempt to open a
//! path is a test-only trigger (`TSUBAME_TEST_FAULT=open-vmm:PATH`,
//! compiled in only with the `test-hooks` feature); a snapshot to a
//! directory nobody granted is the effect a user sees.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::{curl, ok, wait_for_socket, Vmm};
use common::{finish, guest, scratch, spawn_env};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Boots the tiny guest with `disk` configured; the main thread then tries
/// to open `probe`. Returns the trigger's line.
fn open_after_setup(disk: &Path, probe: &Path, extra: &[&str]) -> String {
    let kernel = guest("hello64");
    let disk_arg = format!("path={}", s(disk));
    let mut args = vec!["run", "--kernel", s(&kernel), "--disk", &disk_arg];
    args.extend_from_slice(extra);
    let fault = format!("open-vmm:{}", s(probe));
    let child = spawn_env(&args, None, &[("TSUBAME_TEST_FAULT", &fault)]);
    let r = finish(child, Duration::from_secs(30), "landlock probe");
    assert_eq!(r.status, 0, "{}", r.output());
    r.stderr
        .lines()
        .find(|l| l.starts_with("test open "))
        .unwrap_or_else(|| panic!("no probe line: {}", r.output()))
        .to_string()
}

#[test]
fn a_disk_that_was_not_configured_cannot_be_opened() {
    let dir = scratch("landlock-disks");
    let (configured, other) = (dir.join("a.img"), dir.join("b.img"));
    std::fs::write(&configured, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();

    let line = open_after_setup(&configured, &other, &[]);
    assert!(line.ends_with("Permission denied (os error 13)"), "{line}");
    // The configured disk (and /dev/kvm) stay open to it.
    let line = open_after_setup(&configured, &configured, &[]);
    assert!(line.ends_with(": opened"), "{line}");
    let line = open_after_setup(&configured, Path::new("/dev/kvm"), &[]);
    assert!(line.ends_with(": opened"), "{line}");
    // Nothing else of the host either.
    let line = open_after_setup(&configured, Path::new("/etc/passwd"), &[]);
    assert!(line.ends_with("Permission denied (os error 13)"), "{line}");
    // --landlock off, or a rule for it, opens it again.
    let line = open_after_setup(&configured, &other, &["--landlock", "off"]);
    assert!(line.ends_with(": opened"), "{line}");
    let rule = format!("path={},access=r", s(&dir));
    let line = open_after_setup(&configured, &other, &["--landlock-rule", &rule]);
    assert!(line.ends_with(": opened"), "{line}");
}

/// Pauses a running guest and asks for a snapshot into `into`.
fn snapshot_into(into: &Path, extra: &[&str]) -> (u16, String) {
    let sock = scratch("landlock-api").join(format!("{}.sock", extra.len()));
    let kernel = guest("halt");
    let mut args = vec!["run", "--kernel", s(&kernel), "--api-sock", s(&sock)];
    args.extend_from_slice(extra);
    let vmm = Vmm::start(&args);
    wait_for_socket(&sock);
    vmm.wait_for("halting for ever", Duration::from_secs(30));
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&into.join("vm.snap")),
        s(&into.join("vm.mem"))
    );
    let answer = curl(&sock, "PUT", "/snapshot/create", Some(&body));
    vmm.signal(libc::SIGTERM);
    let (code, _, err) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 143, "{err}");
    answer
}

#[test]
fn a_snapshot_goes_only_where_a_rule_lets_it() {
    let dir = scratch("landlock-snap");
    let (code, body) = snapshot_into(&dir, &[]);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("Landlock") && body.contains("--landlock-rule"),
        "{body}"
    );
    assert!(!dir.join("vm.snap").exists() && !dir.join("vm.mem").exists());

    let rule = format!("path={},access=rw", s(&dir));
    let (code, body) = snapshot_into(&dir, &["--landlock-rule", &rule]);
    assert_eq!(code, 204, "{body}");
    assert!(dir.join("vm.snap").exists() && dir.join("vm.mem").exists());

    // Read access is not enough to write one.
    let ro = scratch("landlock-snap-ro");
    let rule = format!("path={},access=r", s(&ro));
    let (code, body) = snapshot_into(&ro, &["--landlock-rule", &rule]);
    assert_eq!(code, 400, "{body}");
}
