//! The API end to end, driven by a client nobody here wrote (`curl
//! --unix-socket`): firecracker-go-sdk's start-up sequence, phase rules,
//! pause and resume of a guest that counts timer ticks, the config file,
//! hostile clients.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::api::{ok, refused, state, wait_for_socket, Vmm};
use common::{guest, scratch, tsubame_bin};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a thread in a network namespace of its own (taps made there
/// vanish with it), when we may; else on this thread, without networks.
fn maybe_in_netns(f: impl FnOnce(bool) + Send + 'static) {
    thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
        // namespace; the processes it spawns inherit it.
        let netns = is_root() && unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
        if !netns {
            eprintln!("not root: the network-interfaces step is left out");
        }
        f(netns)
    })
    .join()
    .unwrap()
}

fn ticks_count(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ticks "))
        .filter_map(|h| u64::from_str_radix(h.trim(), 16).ok())
        .collect()
}

#[test]
fn go_sdk_sequence_then_pause_stops_the_guest_and_resume_finishes_it() {
    maybe_in_netns(|netns| {
        let dir = scratch("api-gosdk");
        let sock = dir.join("api.sock");
        let disk = dir.join("rootfs.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let vmm = Vmm::start(&["--api-sock", sock.to_str().unwrap(), "--id", "gosdk-1"]);
        wait_for_socket(&sock);

        // firecracker-go-sdk: poll GET /machine-config until it answers.
        let mc: serde_json::Value =
            serde_json::from_str(&ok(&sock, "GET", "/machine-config", None)).unwrap();
        assert_eq!(
            (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
            (Some(1), Some(128))
        );
        assert_eq!(state(&sock), "Not started");
        refused(
            &sock,
            "PATCH",
            "/vm",
            Some(r#"{"state":"Paused"}"#),
            "before starting the microVM",
        );
        refused(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type":"SendCtrlAltDel"}"#),
            "before starting",
        );
        ok(
            &sock,
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":false}"#),
        );
        let mc: serde_json::Value =
            serde_json::from_str(&ok(&sock, "GET", "/machine-config", None)).unwrap();
        assert_eq!(
            (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
            (Some(2), Some(64))
        );
        let kernel = guest("ticks");
        ok(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
                kernel.display()
            )),
        );
        ok(
            &sock,
            "PUT",
            "/drives/rootfs",
            Some(&format!(
                r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
                disk.display()
            )),
        );
        if netns {
            ok(
                &sock,
                "PUT",
                "/network-interfaces/eth0",
                Some(
                    r#"{"iface_id":"eth0","host_dev_name":"tap-api0","guest_mac":"06:00:ac:10:00:02"}"#,
                ),
            );
        }
        ok(
            &sock,
            "PUT",
            "/vsock",
            Some(&format!(
                r#"{{"guest_cid":3,"uds_path":"{}"}}"#,
                dir.join("v.sock").display()
            )),
        );
        ok(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        );
        assert_eq!(state(&sock), "Running");
        refused(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path":"{}"}}"#,
                kernel.display()
            )),
            "after starting the microVM",
        );
        refused(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
            "after starting",
        );

        vmm.wait_for("ticks 0000000000000014", Duration::from_secs(20));
        ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
        assert_eq!(state(&sock), "Paused");
        let before = ticks_count(&vmm.out());
        thread::sleep(Duration::from_millis(1500));
        let after = ticks_count(&vmm.out());
        assert_eq!(before, after, "the guest made progress while paused");
        // Pausing a paused VM is accepted, as in Firecracker.
        ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
        let cfg: serde_json::Value =
            serde_json::from_str(&ok(&sock, "GET", "/vm/config", None)).unwrap();
        assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
        assert_eq!(cfg["vsock"]["guest_cid"], 3);
        ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
        ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
        assert_eq!(state(&sock), "Running");

        let (code, out, err) = vmm.wait(Duration::from_secs(30));
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("done 0000000000000064"), "{out}");
        let counts = ticks_count(&out);
        assert_eq!(counts.len(), 9, "every tenth tick printed once: {out}");
        assert!(
            err.contains("root=/dev/vda rw"),
            "root device on the command line: {err}"
        );
        assert!(!sock.exists(), "the socket is removed at exit");
    });
}

/// `tsubame run --kernel <guest> --api-sock <scratch>/api.sock EXTRA…`:
/// the socket path and the arguments.
fn run_with_api(name: &str, guest_name: &str, extra: &[&str]) -> (std::path::PathBuf, Vec<String>) {
    let sock = scratch(name).join("api.sock");
    let mut args: Vec<String> = ["run", "--kernel"].iter().map(|s| s.to_string()).collect();
    args.push(guest(guest_name).to_string_lossy().into_owned());
    args.push("--api-sock".into());
    args.push(sock.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    (sock, args)
}

#[test]
fn sigterm_while_paused_ends_the_machine_at_once() {
    let (sock, args) = run_with_api("api-paused-sigterm", "ticks", &["--cpus", "2"]);
    let vmm = Vmm::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_socket(&sock);
    vmm.wait_for("ticking", Duration::from_secs(20));
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let start = Instant::now();
    vmm.signal(libc::SIGTERM);
    let (code, out, err) = vmm.wait(Duration::from_secs(5));
    assert_eq!(code, 143, "{out}\n{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        !out.contains("done"),
        "the guest finished while paused: {out}"
    );
    assert!(!sock.exists());
}

/// What a user sees: input typed during a pause is neither lost nor seen
/// by the guest until it resumes. (Dropping the VMM's own hold still
/// passes: the paused guest cannot read its UART either. The hold is there
/// so device state does not change while paused.)
#[test]
fn console_input_is_held_while_paused_and_delivered_after() {
    let (sock, args) = run_with_api("api-paused-input", "echo", &[]);
    let (vmm, mut input) =
        Vmm::start_with_input(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_socket(&sock);
    vmm.wait_for("ready", Duration::from_secs(20));
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    input.write_all(b"held back\n").unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(
        !vmm.out().contains("HELD"),
        "input reached a paused guest: {}",
        vmm.out()
    );
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    let (code, out, err) = vmm.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ready\nHELD BACK\nbye"), "{out}");
}

#[test]
fn api_socket_path_that_exists_is_refused() {
    let dir = scratch("api-exists");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, b"").unwrap();
    let (code, _, err) =
        Vmm::start(&["--api-sock", sock.to_str().unwrap()]).wait(Duration::from_secs(10));
    assert_eq!(code, 1);
    assert!(err.contains("the path exists"), "{err}");
}

#[test]
fn sigterm_before_instance_start_exits_143_and_removes_the_socket() {
    let dir = scratch("api-sigterm");
    let sock = dir.join("api.sock");
    let vmm = Vmm::start(&["--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock);
    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(Duration::from_secs(5));
    assert_eq!(code, 143);
    assert!(!sock.exists());
}

fn config_json(kernel: &Path, extra: &str) -> String {
    format!(
        r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}},
            "machine-config":{{"vcpu_count":1,"mem_size_mib":32}}{extra}}}"#,
        kernel.display()
    )
}

#[test]
fn config_file_boots_with_and_without_the_api() {
    let dir = scratch("api-config");
    let file = dir.join("vm.json");
    std::fs::write(&file, config_json(&guest("hello64"), "")).unwrap();
    let (code, out, err) = Vmm::start(&["--config-file", file.to_str().unwrap(), "--no-api"])
        .wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello from a 64-bit guest"), "{out}");

    // With the API: the machine runs at once and the API sees it running.
    std::fs::write(&file, config_json(&guest("ticks"), "")).unwrap();
    let sock = dir.join("api.sock");
    let vmm = Vmm::start(&[
        "--config-file",
        file.to_str().unwrap(),
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    wait_for_socket(&sock);
    assert_eq!(state(&sock), "Running");
    let (code, out, err) = vmm.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("done"), "{out}");
}

#[test]
fn bad_config_files_exit_1_with_one_line_naming_the_problem() {
    let dir = scratch("api-badconfig");
    let kernel = guest("hello64");
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "EOF"),
        ("[]".into(), "expected a JSON object"),
        (
            config_json(&kernel, r#","frobnicate":1"#),
            "unknown field `frobnicate`",
        ),
        (
            config_json(Path::new("/nonexistent/k"), ""),
            "boot-source: The kernel file cannot be opened: /nonexistent/k",
        ),
        (
            config_json(&kernel, "").replace("\"vcpu_count\":1", "\"vcpu_count\":0"),
            "machine-config: Invalid vCPU count: 0",
        ),
        (
            config_json(&kernel, "").replace("\"vcpu_count\":1", "\"vcpu_count\":\"two\""),
            "invalid type: string",
        ),
        (
            config_json(
                &kernel,
                r#","drives":[{"drive_id":"a b","path_on_host":"/dev/null","is_root_device":false}]"#,
            ),
            "Invalid ID",
        ),
        (
            config_json(
                &kernel,
                r#","drives":[{"drive_id":"d","path_on_host":"/nonexistent.img","is_root_device":false}]"#,
            ),
            "drives[d]: Unable to open drive file /nonexistent.img",
        ),
        (
            config_json(&kernel, r#","vsock":{"guest_cid":2,"uds_path":"/tmp/v"}"#),
            "vsock: Invalid vsock: cid=2",
        ),
        (
            config_json(
                &kernel,
                r#","network-interfaces":[{"iface_id":"e","host_dev_name":"t","guest_mac":"zz"}]"#,
            ),
            "network-interfaces[e]",
        ),
        (
            config_json(&kernel, "").replace("\"boot-source\"", "\"boot-sourc\""),
            "unknown field `boot-sourc`",
        ),
        (
            r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":32}}"#.into(),
            "without kernel configuration",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(dir.join("bad.json"), &text).unwrap();
        let (code, _, err) = Vmm::start(&[
            "--config-file",
            dir.join("bad.json").to_str().unwrap(),
            "--no-api",
        ])
        .wait(Duration::from_secs(10));
        assert_eq!(code, 1, "{text}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("tsubame: ")).collect();
        assert_eq!(lines.len(), 1, "{text}: {err}");
        assert!(
            lines[0].contains(needle),
            "{text}: {:?} lacks {needle:?}",
            lines[0]
        );
        assert!(
            lines[0].contains("bad.json"),
            "names the file: {}",
            lines[0]
        );
    }
    let (code, _, err) = Vmm::start(&["--no-api"]).wait(Duration::from_secs(10));
    assert_eq!(code, 1);
    assert!(err.contains("--no-api needs --config-file"), "{err}");
}

#[test]
fn hostile_clients_do_not_stop_the_guest_or_the_api() {
    let (sock, args) = run_with_api("api-hostile", "halt", &[]);
    let vmm = Vmm::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_socket(&sock);
    assert_eq!(state(&sock), "Running");

    // One that says nothing, one that stops half-way, one that announces
    // a 1 GiB body, and 200 at once.
    let _silent = UnixStream::connect(&sock).unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        .unwrap();
    let mut huge = UnixStream::connect(&sock).unwrap();
    huge.write_all(b"PUT /drives/x HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n")
        .unwrap();
    let _ = huge.write_all(&vec![b'x'; 1 << 20]);
    let mut answer = Vec::new();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = huge.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let many: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    assert!(many.len() >= 100, "only {} connections", many.len());

    let start = Instant::now();
    assert_eq!(state(&sock), "Running");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "GET / took {:?}",
        start.elapsed()
    );
    // Garbage and a wrong method get 400s, and the server lives on.
    let mut junk = UnixStream::connect(&sock).unwrap();
    junk.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    let mut a = String::new();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = junk.read_to_string(&mut a);
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    refused(
        &sock,
        "DELETE",
        "/machine-config",
        None,
        "Invalid request method and/or path",
    );
    refused(
        &sock,
        "GET",
        "/nowhere",
        None,
        "Invalid request method and/or path",
    );
    assert_eq!(state(&sock), "Running");
    drop(many);

    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(Duration::from_secs(5));
    assert_eq!(code, 143);
}

#[test]
fn ctl_reports_pauses_resumes_and_flushes_metrics() {
    let dir = scratch("api-ctl");
    let sock = dir.join("api.sock");
    let metrics = dir.join("metrics.json");
    let kernel = guest("ticks");
    let file = dir.join("vm.json");
    std::fs::write(
        &file,
        config_json(
            &kernel,
            &format!(
                r#","metrics":{{"metrics_path":"{}"}},"entropy":{{}}"#,
                metrics.display()
            ),
        ),
    )
    .unwrap();
    let vmm = Vmm::start(&[
        "--config-file",
        file.to_str().unwrap(),
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    wait_for_socket(&sock);
    let ctl = |what: &str| -> (i32, String, String) {
        let o = Command::new(tsubame_bin())
            .args(["ctl", "--api-sock", sock.to_str().unwrap(), what])
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    vmm.wait_for("ticks", Duration::from_secs(20));
    let (code, out, _) = ctl("pause");
    assert_eq!((code, out.trim()), (0, "paused"));
    let (_, info, _) = ctl("info");
    assert!(info.contains("state        Paused"), "{info}");
    let (code, _, _) = ctl("metrics");
    assert_eq!(code, 0);
    let line = std::fs::read_to_string(&metrics).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(v["state"], "Paused");
    assert!(
        v["vcpu"][0]["exit_io_out"]["count"].as_u64().unwrap() > 0,
        "{line}"
    );
    assert!(v["api_server"]["requests"].as_u64().unwrap() >= 2, "{line}");
    assert_eq!(v["devices"]["virtio-rng0"]["bytes"], 0, "{line}");
    let (_, cfg, _) = ctl("config");
    assert!(cfg.contains("\"mem_size_mib\": 32"), "{cfg}");
    assert_eq!(ctl("resume").0, 0);
    let (code, _, _) = vmm.wait(Duration::from_secs(30));
    assert_eq!(code, 0);
    let (code, _, err) = ctl("info");
    assert_eq!(code, 1, "no socket any more");
    assert!(err.contains("api.sock"), "{err}");
}

/// Forwards TCP connections on 127.0.0.1 to the API's Unix socket, for a
/// client that only speaks TCP. Returns the port.
fn tcp_to_unix(sock: &Path) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sock = sock.to_path_buf();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&sock) else {
                continue;
            };
            let (mut tr, mut uw) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut tr, &mut uw);
                let _ = uw.shutdown(std::net::Shutdown::Write);
            });
            let (mut ur, mut tw) = (unix, tcp);
            thread::spawn(move || {
                let _ = std::io::copy(&mut ur, &mut tw);
                let _ = tw.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A property test of the server against its own OpenAPI file
/// (schemathesis; .ci/run installs it): generated requests for every
/// operation, a bounded number each, and not one answer may be a 5xx; the
/// server is still there afterwards. /logger and /metrics are left out:
/// they create files at the paths they are given.
#[test]
fn schemathesis_finds_no_server_error() {
    let dir = scratch("api-schemathesis");
    let sock = dir.join("api.sock");
    let vmm = Vmm::start(&["--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock);
    let port = tcp_to_unix(&sock);
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("api/tsubame.yaml");
    let out = Command::new("st")
        .current_dir(&dir)
        .args(["run"])
        .arg(&schema)
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--exclude-path",
            "/logger",
            "--exclude-path",
            "/metrics",
        ])
        .output()
        .expect("schemathesis's `st` (pip install schemathesis; .ci/run installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state(&sock) == "Not started" || state(&sock) == "Running");
    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(Duration::from_secs(5));
    assert_eq!(code, 143);
    eprintln!(
        "{}",
        report.lines().rev().take(6).collect::<Vec<_>>().join("\n")
    );
}

/// A start that fails halfway (the kernel does not load, after the vCPU
/// and device threads exist) leaves nothing behind: no thread, and the
/// disk image is closed again, so the process can be configured anew.
#[test]
fn a_failed_start_leaves_no_thread_and_no_open_disk() {
    let dir = scratch("api-failed-start");
    let sock = dir.join("api.sock");
    let (kernel, disk) = (dir.join("not-a-kernel"), dir.join("disk.img"));
    std::fs::write(&kernel, vec![0x5au8; 64 * 1024]).unwrap();
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vmm = Vmm::start(&["--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock);
    ok(
        &sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{}"}}"#,
            kernel.display()
        )),
    );
    ok(
        &sock,
        "PUT",
        "/drives/rootfs",
        Some(&format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            disk.display()
        )),
    );
    refused(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        "Start microvm error",
    );
    let pid = vmm.child.id();
    let machine_threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .filter(|t| t == "virtio" || t == "console" || t.starts_with("vcpu"))
            .collect()
    };
    // Threads end just after the answer: give them a moment, not more.
    let since = Instant::now();
    while !machine_threads().is_empty() && since.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(machine_threads().is_empty(), "{:?}", machine_threads());
    let disk_open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .any(|p| p == disk);
    assert!(!disk_open, "the disk image is still open");
    assert_eq!(state(&sock), "Not started");
    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 128 + libc::SIGTERM);
}
