//! `--irqchip`: the same tiny guests with KVM's interrupt controllers,
//! with KVM's LAPICs and Tsubame's IOAPIC, PIC and PIT (`split`), and with
//! Tsubame's PIC and PIT alone (`userspace`), where HLT and the interrupt
//! window are the VMM's.

mod common;

use common::{guest, run, run_and_signal};

fn kernel(name: &str) -> String {
    guest(name).to_string_lossy().into_owned()
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// The figure on the line of `--stats` output that starts with `label`.
fn stat(stderr: &str, label: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix(label)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn the_pit_ticks_through_the_pic_in_every_mode() {
    for mode in ["kernel", "split", "userspace"] {
        let r = run(&[
            "run",
            "--kernel",
            &kernel("pitticks"),
            "--irqchip",
            mode,
            "--stats",
        ]);
        assert_eq!(r.status, 0, "{mode}: {}", r.output());
        for want in [
            "pic and pit programmed".to_string(),
            "window taken".to_string(),
            format!("latch {}", hex(0)),
            format!("done {}", hex(50)),
        ] {
            assert!(
                r.stdout.contains(&want),
                "{mode}: missing {want}: {}",
                r.output()
            );
        }
        assert!(
            r.stderr.contains(&format!("irqchip: {mode}")),
            "{}",
            r.output()
        );
        let (hlt, window, injected) = (
            stat(&r.stderr, "hlt"),
            stat(&r.stderr, "irq-window"),
            stat(&r.stderr, "interrupts injected (KVM_INTERRUPT)"),
        );
        match mode {
            "userspace" => {
                assert!(hlt >= 40, "{mode}: {hlt} HLT exits: {}", r.stderr);
                assert!(
                    window >= 1,
                    "{mode}: no interrupt-window exit: {}",
                    r.stderr
                );
                assert!(
                    injected >= 50,
                    "{mode}: {injected} injections: {}",
                    r.stderr
                );
            }
            // KVM's LAPIC waits in HLT; the PIC's ExtINT is injected.
            "split" => {
                assert_eq!(hlt, 0, "{}", r.stderr);
                assert!(
                    injected >= 50,
                    "{mode}: {injected} injections: {}",
                    r.stderr
                );
            }
            _ => assert_eq!((hlt, window, injected), (0, 0, 0), "{}", r.stderr),
        }
    }
}

#[test]
fn the_pit_ticks_through_an_ioapic_pin() {
    for mode in ["kernel", "split"] {
        let r = run(&[
            "run",
            "--kernel",
            &kernel("ioapicticks"),
            "--irqchip",
            mode,
            "--stats",
        ]);
        assert_eq!(r.status, 0, "{mode}: {}", r.output());
        assert!(
            r.stdout.contains(&format!("done {}", hex(50))),
            "{mode}: {}",
            r.output()
        );
        if mode == "split" {
            // The guest's entries went through Tsubame's IOAPIC.
            assert!(r.stderr.contains("ioapic (0xfec00000)"), "{}", r.stderr);
        }
    }
}

#[test]
fn smp_and_the_lapic_timer_work_with_the_split_irqchip() {
    let r = run(&[
        "run",
        "--kernel",
        &kernel("smp"),
        "--cpus",
        "4",
        "--irqchip",
        "split",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.contains("all cpus up"), "{}", r.output());
    let r = run(&["run", "--kernel", &kernel("ticks"), "--irqchip", "split"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains(&format!("done {}", hex(100))),
        "{}",
        r.output()
    );
}

#[test]
fn a_halted_vcpu_with_the_userspace_irqchip_still_stops_on_sigterm() {
    // cli; hlt with no interrupt source: the vCPU waits in Tsubame.
    let r = run_and_signal(
        &["run", "--kernel", &kernel("halt"), "--irqchip", "userspace"],
        None,
        "halting",
        libc::SIGTERM,
    );
    assert_eq!(r.status, 128 + libc::SIGTERM, "{}", r.output());
}

#[test]
fn virtio_blk_works_in_every_mode() {
    for mode in ["kernel", "split", "userspace"] {
        let img = common::scratch(&format!("irqchip-virtio-blk-{mode}")).join("disk.img");
        let mut data = vec![0u8; 8 * 512];
        data[..8].copy_from_slice(b"HOSTDISK");
        std::fs::write(&img, &data).unwrap();
        let disk = format!("path={}", img.display());
        let r = run(&[
            "run",
            "--kernel",
            &kernel("virtioblk"),
            "--disk",
            &disk,
            "--irqchip",
            mode,
        ]);
        assert_eq!(r.status, 0, "{mode}: {}", r.output());
        let pattern = hex(u64::from_le_bytes(*b"TSUBAME!"));
        assert!(
            r.stdout.contains(&format!("read1 {} {pattern}", hex(0))),
            "{mode}: {}",
            r.output()
        );
    }
}

#[test]
fn bad_irqchip_choices_are_refused_with_the_reason() {
    let r = run(&[
        "run",
        "--kernel",
        &kernel("hello64"),
        "--irqchip",
        "userspace",
        "--cpus",
        "2",
    ]);
    assert_eq!(r.status, 1, "{}", r.output());
    assert!(r.stderr.contains("vCPU 0 only"), "{}", r.output());
    let r = run(&["run", "--kernel", &kernel("hello64"), "--irqchip", "pic"]);
    assert_ne!(r.status, 0, "{}", r.output());
    assert!(
        r.stderr.contains("unknown irqchip mode 'pic'"),
        "{}",
        r.output()
    );
}

#[test]
fn pause_resume_work_and_snapshots_are_refused_in_userspace_mode() {
    use common::api::{ok, refused, wait_for_socket, Vmm};
    // (`split` snapshots: tests/snapshot.rs.)
    let mode = "userspace";
    let dir = common::scratch(&format!("irqchip-snap-{mode}"));
    let sock = dir.join("api.sock");
    // cli; hlt: in `userspace` the vCPU waits halted in Tsubame.
    let kernel = kernel("halt");
    let rule = format!("path={},access=rw", dir.display());
    let vmm = Vmm::start(&[
        "run",
        "--kernel",
        &kernel,
        "--irqchip",
        mode,
        "--api-sock",
        sock.to_str().unwrap(),
        "--landlock-rule",
        &rule,
    ]);
    wait_for_socket(&sock);
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let body = format!(
        r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
        dir.join("x.snap").display(),
        dir.join("x.mem").display()
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&body),
        &format!("--irqchip {mode} are not supported yet"),
    );
    refused(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&body),
        "use --irqchip split or kernel",
    );
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert!(!dir.join("x.mem").exists(), "{mode}: no memory file left");
    vmm.signal(libc::SIGTERM);
    let (code, out, err) = vmm.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, 128 + libc::SIGTERM, "{mode}: {out}{err}");
}
