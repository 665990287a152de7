//! A thread of Tsubame's that dies stops the machine: exit status 2 and a
//! report naming the thread and the cause. No guest can make a thread
//! panic on purpose, so the faults are injected (`TSUBAME_TEST_FAULT`,
//! compiled in only with the `test-hooks` feature).

mod common;

use common::{finish, guest, scratch, spawn_env};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn kernel(name: &str) -> String {
    guest(name).to_string_lossy().into_owned()
}

/// Runs `args` with `fault` armed; the run must end by itself.
fn run_with_fault(args: &[&str], fault: &str) -> common::Run {
    let child = spawn_env(args, None, &[("TSUBAME_TEST_FAULT", fault)]);
    finish(child, Duration::from_secs(30), fault)
}

fn assert_thread_died(r: &common::Run, thread: &str, fault: &str) {
    assert_eq!(r.status, 2, "{}", r.output());
    let want = format!("thread '{thread}' died: injected fault {fault}");
    assert!(r.stderr.contains(&want), "no '{want}': {}", r.output());
}

#[test]
fn a_vcpu_thread_that_panics_stops_a_one_vcpu_machine() {
    // `halt` sleeps in HLT for ever once it has printed: only the panic
    // report can end this run.
    let r = run_with_fault(&["run", "--kernel", &kernel("halt")], "vcpu-panic");
    assert_thread_died(&r, "vcpu 0", "vcpu-panic");
}

/// A vCPU that reaches the start gate only after the builder has every
/// "created" report, and has gone on to its main loop, still starts: the
/// gate waits for it (it opens when the last vCPU arrives).
#[test]
fn a_vcpu_late_at_the_start_gate_still_runs_the_guest() {
    for cpus in ["1", "2"] {
        let args = ["run", "--kernel", &kernel("hello64"), "--cpus", cpus];
        let r = run_with_fault(&args, "vcpu-late-at-gate");
        assert_eq!(r.status, 0, "{cpus} vCPUs: {}", r.output());
        assert!(
            r.stdout.contains("Hello from a 64-bit guest"),
            "{cpus} vCPUs: {}",
            r.output()
        );
    }
}

#[test]
fn a_vcpu_thread_that_panics_stops_the_other_vcpus() {
    let r = run_with_fault(
        &["run", "--kernel", &kernel("halt"), "--cpus", "2"],
        "vcpu-panic",
    );
    assert_eq!(r.status, 2, "{}", r.output());
    assert!(
        r.stderr.contains("died: injected fault vcpu-panic"),
        "{}",
        r.output()
    );
}

#[test]
fn a_device_thread_that_panics_stops_the_machine() {
    // The guest waits for its rng request for ever without the device.
    let r = run_with_fault(
        &["run", "--kernel", &kernel("virtiorng"), "--rng"],
        "virtio-panic",
    );
    assert_thread_died(&r, "virtio", "virtio-panic");
}

#[test]
fn a_device_thread_whose_event_loop_fails_stops_the_machine() {
    let r = run_with_fault(
        &["run", "--kernel", &kernel("virtiorng"), "--rng"],
        "virtio-error",
    );
    assert_thread_died(&r, "virtio", "virtio-error");
}

/// Without io_uring a disk falls back to the synchronous engine and says
/// so, unless `engine=async` asked for io_uring: then the start fails
/// naming the disk.
#[test]
fn a_kernel_without_io_uring_leaves_disks_on_the_synchronous_engine() {
    let img = scratch("fault-no-uring").join("disk.img");
    let mut data = vec![0u8; 8 * 512];
    data[..8].copy_from_slice(b"HOSTDISK");
    std::fs::write(&img, &data).unwrap();
    let guest = kernel("virtioblk");
    let disk = |engine: &str| format!("path={},engine={engine}", img.display());
    let auto = disk("auto");
    let r = run_with_fault(&["run", "--kernel", &guest, "--disk", &auto], "no-io-uring");
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("flush 0000000000000000"),
        "{}",
        r.output()
    );
    assert!(
        r.stderr.contains("no io_uring") && r.stderr.contains("synchronous engine"),
        "{}",
        r.output()
    );
    let strict = disk("async");
    let r = run_with_fault(
        &["run", "--kernel", &guest, "--disk", &strict],
        "no-io-uring",
    );
    assert_eq!(r.status, 1, "{}", r.output());
    assert!(
        r.stderr.contains("disk.img") && r.stderr.contains("engine=async needs io_uring"),
        "{}",
        r.output()
    );
}

#[test]
fn an_api_thread_that_panics_stops_the_running_machine() {
    let sock = scratch("fault-api").join("api.sock");
    let child = spawn_env(
        &[
            "run",
            "--kernel",
            &kernel("halt"),
            "--api-sock",
            sock.to_str().unwrap(),
        ],
        None,
        &[("TSUBAME_TEST_FAULT", "api-panic")],
    );
    common::api::wait_for_socket(&sock);
    let mut conn = UnixStream::connect(&sock).expect("the API socket accepts");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let r = finish(child, Duration::from_secs(30), "api-panic");
    assert_thread_died(&r, "api", "api-panic");
}
