//! Snapshot and restore end to end, with a tiny guest whose state must
//! survive (`persist`: LAPIC-timer and PIT interrupts counted, xmm0-15,
//! its own page tables, console output all along): saved mid-run through
//! the API, the source killed with SIGKILL, restored in new processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::api::{ok, refused, state, wait_for_socket, Vmm};
use common::{guest, run, scratch, tsubame_bin};

const LIMIT: Duration = Duration::from_secs(60);

/// The (lapic, pit) pairs the guest printed.
fn counts(out: &str) -> Vec<(u64, u64)> {
    let hex = |l: &str, p: &str| {
        l.strip_prefix(p)
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    };
    let lines: Vec<&str> = out.lines().collect();
    lines
        .windows(2)
        .filter_map(|w| Some((hex(w[0], "lapic ")?, hex(w[1], "pit ")?)))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Landlock lets a VMM write snapshots only where a rule says so.
fn write_rule(dir: &Path) -> String {
    format!("path={},access=rw", s(dir))
}

/// Boots `persist` with an API socket, waits until it has printed `lapic
/// <at>`, pauses and snapshots it (Full), then SIGKILLs it. Returns its
/// console output.
fn snapshot_mid_run(dir: &Path, extra: &[&str], at: u64) -> (PathBuf, PathBuf, String) {
    let sock = dir.join("src.sock");
    let (st, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let kernel = guest("persist");
    let rule = write_rule(dir);
    let mut args = vec!["run", "--kernel", s(&kernel), "--api-sock", s(&sock)];
    args.extend_from_slice(&["--landlock-rule", &rule]);
    args.extend_from_slice(extra);
    let vmm = Vmm::start(&args);
    wait_for_socket(&sock);
    vmm.wait_for(&format!("lapic {at:016x}"), LIMIT);
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let body = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&st),
        s(&mem)
    );
    ok(&sock, "PUT", "/snapshot/create", Some(&body));
    let before = vmm.out();
    vmm.signal(libc::SIGKILL);
    let (code, _, _) = vmm.wait(LIMIT);
    assert_eq!(code, 128 + libc::SIGKILL);
    (st, mem, before)
}

/// The restored guest's output continues the source's exactly: every
/// count after the last one printed before the snapshot, the checks
/// passing, the PIT still ticking.
fn assert_continues(before: &str, after: &str) {
    let (b, a) = (counts(before), counts(after));
    let last = *b.last().expect("counts before the snapshot");
    let first = *a
        .first()
        .unwrap_or_else(|| panic!("no counts after restore:\n{after}"));
    assert_eq!(
        first.0,
        last.0 + 10,
        "LAPIC ticks continue:\n{before}\n---\n{after}"
    );
    assert!(after.contains("xmm ok"), "xmm registers survive:\n{after}");
    assert!(after.contains("paging ok"), "page tables survive:\n{after}");
    assert!(after.trim_end().ends_with("done"), "{after}");
    let end = *a.last().unwrap();
    assert_eq!(end.0, 60);
    assert!(
        end.1 >= last.1 + (end.0 - last.0) / 2,
        "the PIT ticked on after restore: {last:?} then {end:?}"
    );
    // Both timers run at 100 Hz: time spent paused or saved is not
    // delivered afterwards as a burst of PIT ticks.
    assert!(
        end.1 <= last.1 + (end.0 - last.0) + 5,
        "no burst of missed PIT ticks: {last:?} then {end:?}"
    );
    assert!(!after.contains("persist\n"), "restored, not rebooted");
}

#[test]
fn a_killed_guest_restores_twice_from_one_snapshot_and_finishes() {
    let dir = scratch("snap-twice");
    let (st, mem, before) = snapshot_mid_run(&dir, &[], 0x14);
    assert!(before.starts_with("persist\n"), "{before}");

    // Two machines from one memory file at once: MAP_PRIVATE keeps each
    // one's writes its own.
    let restore = |sock: &str| {
        Vmm::start(&[
            "restore",
            "--snapshot",
            s(&st),
            "--mem",
            s(&mem),
            "--resume",
            "--api-sock",
            &dir.join(sock).to_string_lossy(),
        ])
    };
    let saved = std::fs::read(&mem).unwrap();
    let (a, b) = (restore("a.sock"), restore("b.sock"));
    for vm in [a, b] {
        let (code, out, err) = vm.wait(LIMIT);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_continues(&before, &out);
    }
    assert!(
        std::fs::read(&mem).unwrap() == saved,
        "the guests' writes never reach the memory file"
    );
}

/// Saves the paused machine behind `sock` again (generation 2), resumes
/// it to its end, then restores generation 2 in a fresh process: both
/// continue `before`. Returns the first one's stderr.
fn save_again_resume_and_restore(vmm: Vmm, sock: &Path, dir: &Path, before: &str) -> String {
    let (st2, mem2) = (dir.join("gen2.snap"), dir.join("gen2.mem"));
    let gen2 = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&st2),
        s(&mem2)
    );
    ok(sock, "PUT", "/snapshot/create", Some(&gen2));
    ok(sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    let (code, out, err) = vmm.wait(LIMIT);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_continues(before, &out);
    let r = run(&[
        "restore",
        "--snapshot",
        s(&st2),
        "--mem",
        s(&mem2),
        "--resume",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert_continues(before, &r.stdout);
    err
}

/// `--irqchip split`: the PIT, the PIC pair and the IOAPIC are Tsubame's
/// and save themselves. The guest's PIT ticks reach it through the
/// IOAPIC's pin 2, so a restore that lost the PIT's programming or the
/// IOAPIC's entries would leave the PIT silent; saved in generation 2
/// from a restored machine as well.
#[test]
fn a_split_irqchip_guest_restores_with_its_pit_and_ioapic() {
    let dir = scratch("snap-split");
    let (st, mem, before) = snapshot_mid_run(&dir, &["--irqchip", "split"], 0x14);
    let sock = dir.join("gen2.sock");
    let rule = write_rule(&dir);
    let vmm = Vmm::start(&[
        "restore",
        "--snapshot",
        s(&st),
        "--mem",
        s(&mem),
        "--api-sock",
        s(&sock),
        "--landlock-rule",
        &rule,
    ]);
    wait_for_socket(&sock);
    let err = save_again_resume_and_restore(vmm, &sock, &dir, &before);
    assert!(
        err.contains("irqchip: split"),
        "built again in split mode: {err}"
    );
}

#[test]
fn firecracker_load_in_a_fresh_process_then_resume() {
    let dir = scratch("snap-load");
    let (st, mem, before) = snapshot_mid_run(&dir, &[], 0x1e);
    let sock = dir.join("other.sock");
    let rule = write_rule(&dir);
    let vmm = Vmm::start(&["--api-sock", s(&sock), "--landlock-rule", &rule]);
    wait_for_socket(&sock);
    let load = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":false}}"#,
        s(&st),
        s(&mem)
    );
    ok(&sock, "PUT", "/snapshot/load", Some(&load));
    assert_eq!(state(&sock), "Paused");
    std::thread::sleep(Duration::from_millis(300));
    assert!(counts(&vmm.out()).is_empty(), "paused until resumed");
    refused(&sock, "PUT", "/snapshot/load", Some(&load), "not allowed");
    let mc: serde_json::Value =
        serde_json::from_str(&ok(&sock, "GET", "/machine-config", None)).unwrap();
    assert_eq!(mc["mem_size_mib"].as_u64(), Some(128), "{mc}");

    // The restored machine can be saved again, but not over the file its
    // memory is mapped from.
    let over = format!(
        r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&dir.join("gen2.snap")),
        s(&mem)
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&over),
        "mapped from that file",
    );
    save_again_resume_and_restore(vmm, &sock, &dir, &before);
}

#[test]
fn full_then_diff_then_rebase_then_restore() {
    let dir = scratch("snap-diff");
    let sock = dir.join("src.sock");
    let kernel = guest("persist");
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        s(&kernel),
        "--api-sock",
        s(&sock),
        "--track-dirty-pages",
        "--landlock-rule",
        &write_rule(&dir),
    ]);
    wait_for_socket(&sock);
    let snap = |kind: &str, st: &Path, mem: &Path| {
        ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
        let body = format!(
            r#"{{"snapshot_type":"{kind}","snapshot_path":"{}","mem_file_path":"{}"}}"#,
            s(st),
            s(mem)
        );
        ok(&sock, "PUT", "/snapshot/create", Some(&body));
    };
    let (full_st, full_mem) = (dir.join("full.snap"), dir.join("full.mem"));
    let (diff_st, diff_mem) = (dir.join("diff.snap"), dir.join("diff.mem"));
    vmm.wait_for("lapic 000000000000000a", LIMIT);
    snap("Full", &full_st, &full_mem);
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    vmm.wait_for("lapic 0000000000000014", LIMIT);

    // A Diff that fails after taking the dirty log (its state file cannot
    // be written) leaves nothing behind, and only a Full may follow it.
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let failing = format!(
        r#"{{"snapshot_type":"Diff","snapshot_path":"/nonexistent/d.snap","mem_file_path":"{}"}}"#,
        s(&diff_mem)
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&failing),
        "/nonexistent",
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.starts_with("diff"))
        .collect();
    assert!(left.is_empty(), "a failed snapshot left {left:?}");
    let diff_body = format!(
        r#"{{"snapshot_type":"Diff","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&diff_st),
        s(&diff_mem)
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&diff_body),
        "take a Full",
    );
    snap("Full", &full_st, &full_mem);
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    vmm.wait_for("lapic 0000000000000028", LIMIT);
    snap("Diff", &diff_st, &diff_mem);
    let before = vmm.out();
    vmm.signal(libc::SIGKILL);
    let _ = vmm.wait(LIMIT);

    use std::os::unix::fs::MetadataExt;
    let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks();
    assert_eq!(std::fs::metadata(&diff_mem).unwrap().len(), 128 << 20);
    assert!(
        blocks(&diff_mem) < blocks(&full_mem),
        "a Diff holds only the pages written since the Full ({} vs {} blocks)",
        blocks(&diff_mem),
        blocks(&full_mem)
    );
    let out = Command::new(tsubame_bin())
        .args(["snapshot-editor", "edit-memory", "rebase", "--memory-path"])
        .arg(&full_mem)
        .arg("--diff-path")
        .arg(&diff_mem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = run(&[
        "restore",
        "--snapshot",
        s(&diff_st),
        "--mem",
        s(&full_mem),
        "--resume",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert_continues(&before, &r.stdout);
}

#[test]
fn snapshot_and_load_refuse_what_they_cannot_do() {
    let dir = scratch("snap-refuse");
    let sock = dir.join("src.sock");
    let kernel = guest("ticks");
    let rule = write_rule(&dir);
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        s(&kernel),
        "--api-sock",
        s(&sock),
        "--landlock-rule",
        &rule,
    ]);
    wait_for_socket(&sock);
    let body = |kind: &str| {
        format!(
            r#"{{"snapshot_type":"{kind}","snapshot_path":"{}","mem_file_path":"{}"}}"#,
            s(&dir.join("x.snap")),
            s(&dir.join("x.mem"))
        )
    };
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&body("Full")),
        "must be paused",
    );
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&body("Diff")),
        "track_dirty_pages",
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"a","mem_file_path":"b"}"#),
        "not allowed",
    );
    let unwritable =
        r#"{"snapshot_path":"/nonexistent/dir/x.snap","mem_file_path":"/nonexistent/dir/x.mem"}"#;
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(unwritable),
        "/nonexistent/dir/x.mem",
    );
    let same = format!(
        r#"{{"snapshot_path":"{0}","mem_file_path":"{0}"}}"#,
        s(&dir.join("x.snap"))
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&same),
        "different files",
    );
    assert_eq!(
        state(&sock),
        "Paused",
        "a failed snapshot leaves the VM as it was"
    );
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    let (code, out, _) = vmm.wait(LIMIT);
    assert_eq!(code, 0);
    assert!(out.contains("done"));

    // Before any configuration, a load that cannot work is a 400 that
    // names the problem, and the process can still be configured.
    let fresh = dir.join("fresh.sock");
    let vmm = Vmm::start(&["--api-sock", s(&fresh)]);
    wait_for_socket(&fresh);
    refused(
        &fresh,
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path":"/nonexistent/s","mem_file_path":"/nonexistent/m"}"#),
        "/nonexistent/s",
    );
    refused(
        &fresh,
        "PUT",
        "/snapshot/create",
        Some(&body("Full")),
        "not supported before",
    );
    ok(
        &fresh,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64}"#),
    );
    vmm.signal(libc::SIGTERM);
    let (code, _, _) = vmm.wait(LIMIT);
    assert_eq!(code, 128 + libc::SIGTERM);
}

#[test]
fn damaged_or_mismatched_files_are_refused_with_exit_1() {
    let dir = scratch("snap-bad");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={}", s(&disk));
    let (st, mem, _) = snapshot_mid_run(&dir, &["--disk", &disk_arg], 0xa);
    let good = std::fs::read(&st).unwrap();
    let restore = |state: &Path, memory: &Path| {
        run(&[
            "restore",
            "--snapshot",
            s(state),
            "--mem",
            s(memory),
            "--resume",
        ])
    };
    let expect = |r: common::Run, needle: &str| {
        assert_eq!(r.status, 1, "{}", r.output());
        assert!(
            r.error_lines().iter().any(|l| l.contains(needle)),
            "no {needle:?} in {}",
            r.output()
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.output());
    };
    let bad = dir.join("bad.snap");
    let write_bad = |bytes: &[u8]| std::fs::write(&bad, bytes).unwrap();

    write_bad(&good[..good.len() / 2]);
    expect(restore(&bad, &mem), "truncated");
    let mut v = good.clone();
    v[good.len() / 3] ^= 1;
    write_bad(&v);
    expect(restore(&bad, &mem), "corrupted");
    let mut v = good.clone();
    v[..8].copy_from_slice(b"NOTASNAP");
    write_bad(&v);
    expect(restore(&bad, &mem), "not a Tsubame snapshot");
    let mut v = good.clone();
    v[8] = 99;
    write_bad(&v);
    expect(restore(&bad, &mem), "version 99");
    expect(restore(&dir.join("missing.snap"), &mem), "missing.snap");

    let short = dir.join("short.mem");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    expect(restore(&st, &short), "the snapshot's guest has");
    expect(restore(&st, &dir.join("missing.mem")), "missing.mem");

    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    expect(restore(&st, &mem), "changed size");
    std::fs::remove_file(&disk).unwrap();
    expect(restore(&st, &mem), "disk.img");
}

/// A tap is opened again on restore: by its saved name, or by the name
/// an override gives its interface ID; an override for an interface the
/// snapshot lacks is refused. Needs root (a network namespace of its own).
#[test]
fn taps_are_opened_again_by_name_or_override() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: no network namespace, test left out");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
        // namespace; the processes it spawns inherit it.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let dir = scratch("snap-net");
        let (st, mem, before) = snapshot_mid_run(&dir, &["--net", "tap=tsb-src,id=eth0"], 0x14);
        let links = || {
            let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            !links().contains("tsb-src"),
            "the tap went with its process"
        );

        let bad = run(&[
            "restore",
            "--snapshot",
            s(&st),
            "--mem",
            s(&mem),
            "--net-override",
            "eth9=tsb-x",
        ]);
        assert_eq!(bad.status, 1, "{}", bad.output());
        assert!(bad.stderr.contains("eth9"), "{}", bad.output());

        let vm = Vmm::start(&[
            "restore",
            "--snapshot",
            s(&st),
            "--mem",
            s(&mem),
            "--resume",
            "--net-override",
            "eth0=tsb-new",
        ]);
        vm.wait_for("lapic 000000000000001e", LIMIT);
        assert!(links().contains("tsb-new"), "{}", links());
        let (code, out, err) = vm.wait(LIMIT);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_continues(&before, &out);
    })
    .join()
    .unwrap();
}

#[test]
fn sigterm_during_a_long_snapshot_ends_at_once_and_leaves_no_file() {
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;
    let dir = scratch("snapshot-sigterm");
    let sock = dir.join("api.sock");
    let (st, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let kernel = guest("touch");
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        s(&kernel),
        "--memory",
        "2048",
        "--api-sock",
        s(&sock),
        "--landlock-rule",
        &write_rule(&dir),
    ]);
    wait_for_socket(&sock);
    // 1.5 GiB of pages to write: seconds of I/O.
    vmm.wait_for("touched", Duration::from_secs(180));
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let body = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        s(&st),
        s(&mem)
    );
    let api = sock.clone();
    let request =
        std::thread::spawn(move || common::api::curl(&api, "PUT", "/snapshot/create", Some(&body)));
    // Once 64 MiB of the memory file are written, the write is under way.
    let written = || -> u64 {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("vm.mem"))
            .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
            .sum()
    };
    let start = Instant::now();
    while written() < 64 << 20 {
        assert!(
            start.elapsed() < LIMIT,
            "the snapshot never started writing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Instant::now();
    vmm.signal(libc::SIGTERM);
    let (code, _, err) = vmm.wait(LIMIT);
    let took = sent.elapsed();
    let _ = request.join();
    assert_eq!(code, 143, "{err}");
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM took {took:?} during the snapshot: {err}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vm."))
        .collect();
    assert!(
        left.is_empty(),
        "a snapshot given up leaves nothing: {left:?}"
    );
}
