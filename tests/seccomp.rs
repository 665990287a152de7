//! Every thread of a running Tsubame is under its own seccomp filter, and
//! a call outside a thread's list ends the process with status 159 and one
//! line naming the thread and the call. The forbidden call is made on
//! purpose by a test-only trigger (`TSUBAME_TEST_FAULT=seccomp-<thread>`,
//! compiled in only with the `test-hooks` feature).

mod common;

use common::api::{curl, wait_for_socket, Vmm};
use common::{finish, guest, scratch, spawn_env};
use std::time::Duration;

fn kernel(name: &str) -> String {
    guest(name).to_string_lossy().into_owned()
}

/// `Seccomp:` of each thread of `pid`, by thread name.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:")));
    }
    out.sort();
    out
}

#[test]
fn every_thread_of_a_running_machine_is_filtered() {
    let sock = scratch("seccomp-threads").join("api.sock");
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        &kernel("halt"),
        "--cpus",
        "2",
        "--rng",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    wait_for_socket(&sock);
    vmm.wait_for("halting for ever", Duration::from_secs(30));
    // The main thread installs its filter as its loop starts; one API
    // round trip later it is surely there.
    let (code, _) = curl(&sock, "GET", "/", None);
    assert_eq!(code, 200);
    let modes = seccomp_modes(vmm.child.id());
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["tsubame", "vcpu 0", "vcpu 1", "virtio", "api", "console"] {
        assert!(names.contains(&want), "no thread {want:?}: {modes:?}");
    }
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name:?} is not filtered: {modes:?}");
    }
    vmm.signal(libc::SIGTERM);
    let (code, _, err) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 143, "{err}");
}

/// Runs `args` with thread `kind`'s forbidden call armed.
fn forbidden(kind: &str, args: &[&str]) -> common::Run {
    let fault = format!("seccomp-{kind}");
    let child = spawn_env(args, None, &[("TSUBAME_TEST_FAULT", &fault)]);
    finish(child, Duration::from_secs(30), &fault)
}

fn assert_killed_for(r: &common::Run, thread: &str) {
    assert_eq!(r.status, 159, "{}", r.output());
    let want = format!("tsubame: thread '{thread}' made a forbidden system call: 110 (getppid)");
    assert!(r.stderr.contains(&want), "no {want:?}: {}", r.output());
}

#[test]
fn a_forbidden_call_on_each_kind_of_thread_ends_tsubame_with_159() {
    let (halt, rng) = (kernel("halt"), kernel("virtiorng"));
    let plain = ["run", "--kernel", halt.as_str()];
    assert_killed_for(&forbidden("vcpu", &plain), "vcpu 0");
    assert_killed_for(&forbidden("vmm", &plain), "tsubame");
    assert_killed_for(&forbidden("console", &plain), "console");
    let with_rng = ["run", "--kernel", rng.as_str(), "--rng"];
    assert_killed_for(&forbidden("virtio", &with_rng), "virtio");
}

#[test]
fn a_forbidden_call_on_the_api_thread_ends_tsubame_with_159() {
    let sock = scratch("seccomp-api").join("api.sock");
    let child = spawn_env(
        &["--api-sock", sock.to_str().unwrap()],
        None,
        &[("TSUBAME_TEST_FAULT", "seccomp-api")],
    );
    wait_for_socket(&sock);
    let _ = curl(&sock, "GET", "/", None);
    let r = finish(child, Duration::from_secs(30), "seccomp-api");
    assert_killed_for(&r, "api");
}

#[test]
fn seccomp_off_and_log_let_the_call_through() {
    for mode in ["off", "log"] {
        let child = spawn_env(
            &["--seccomp", mode, "run", "--kernel", &kernel("hello64")],
            None,
            &[("TSUBAME_TEST_FAULT", "seccomp-vcpu")],
        );
        let r = finish(child, Duration::from_secs(30), mode);
        assert_eq!(r.status, 0, "--seccomp {mode}: {}", r.output());
    }
}
