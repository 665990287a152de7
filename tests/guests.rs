//! End-to-end: `tsubame run` on the tiny guests in tests/guests/asm, one
//! exit path each.

mod common;

use common::{guest, host_is_emulated, run, run_and_signal, run_with, scratch};
use std::time::Duration;

fn kernel(name: &str) -> String {
    guest(name).to_string_lossy().into_owned()
}

/// The command line the guest sees for `base` on this host.
fn seen_cmdline(base: &str) -> String {
    use vmm::vm::builder::{EMULATION_PARAMS, MACHINE_PARAMS};
    let mut s = format!("{base} {}", MACHINE_PARAMS.join(" "));
    if host_is_emulated() {
        s = format!("{s} {}", EMULATION_PARAMS.join(" "));
    }
    s
}

#[test]
fn elf_64bit_entry_boots_and_powers_off() {
    let r = run(&["run", "--kernel", &kernel("hello64")]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("Hello from a 64-bit guest"),
        "{}",
        r.output()
    );
    let want = format!("zero page ok, cmdline: {}", seen_cmdline("console=ttyS0"));
    assert!(r.stdout.contains(&want), "{}", r.output());
    assert!(r.stderr.contains("guest powered off"), "{}", r.output());
}

#[test]
fn pvh_entry_gets_start_info() {
    let r = run(&["run", "--kernel", &kernel("pvh"), "--cmdline", "a=b c"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stderr.contains("entered via PVH"), "{}", r.output());
    let want = format!("start info ok, cmdline: {}", seen_cmdline("a=b c"));
    assert!(r.stdout.contains(&want), "{}", r.output());
}

#[test]
fn emulation_only_host_is_announced() {
    let r = run(&["run", "--kernel", &kernel("hello64")]);
    let said = r.stderr.contains("emulation-only KVM");
    assert_eq!(said, host_is_emulated(), "{}", r.output());
    let r = run(&[
        "run",
        "--kernel",
        &kernel("hello64"),
        "--cpu-profile",
        "native",
    ]);
    assert!(
        r.stdout.contains("cmdline: console=ttyS0 reboot=acpi\n"),
        "{}",
        r.output()
    );
}

/// `tsubame run` creates its VM while the command line is parsed, and
/// boots on it; not when `run` is not the first argument or another KVM
/// device is named (the builder makes the VM, as it always could).
#[test]
fn the_vm_is_created_ahead_only_for_a_leading_run() {
    const AHEAD: &str = "VM created ahead";
    let k = kernel("hello64");
    let r = run(&["run", "--kernel", &k, "--log-level", "debug"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stderr.contains(AHEAD), "{}", r.output());
    let r = run(&["--log-level", "debug", "run", "--kernel", &k]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(!r.stderr.contains(AHEAD), "{}", r.output());
    let r = run(&[
        "run",
        "--kernel",
        &k,
        "--log-level",
        "debug",
        "--kvm-device",
        "/dev/kvm",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(!r.stderr.contains(AHEAD), "{}", r.output());
}

#[test]
fn serial_input_reaches_the_guest() {
    let r = run_with(
        &["run", "--kernel", &kernel("echo")],
        Some(b"hello world\n".to_vec()),
        Duration::from_secs(60),
    );
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("ready\nHELLO WORLD\nbye"),
        "{}",
        r.output()
    );
}

#[test]
fn ctrl_a_x_quits() {
    let r = run_with(
        &["run", "--kernel", &kernel("echo")],
        Some(b"ab\x01x".to_vec()),
        Duration::from_secs(60),
    );
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stderr.contains("quit from the console"), "{}", r.output());
}

#[test]
fn unowned_mmio_reads_all_ones_and_is_counted() {
    let r = run(&["run", "--kernel", &kernel("mmio"), "--stats"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("mmio read 00000000ffffffff"),
        "{}",
        r.output()
    );
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("unowned mmio 0xd0000000"))
        .unwrap_or_else(|| panic!("{}", r.output()));
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("2"),
        "one write, one read: {line}"
    );
}

#[test]
fn stats_show_exits_by_reason_and_device() {
    let r = run(&["run", "--kernel", &kernel("hello64"), "--stats"]);
    assert_eq!(r.status, 0, "{}", r.output());
    for needle in [
        "vCPU 0:",
        "io-out",
        "io-in",
        "com1 (port 0x3f8)",
        "acpi-power (port 0x600)",
        "VMM overhead",
        "private",
        "file-backed",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle}: {}",
            r.output()
        );
    }
}

/// Without `--stats` the stop neither renders the tables nor walks guest
/// RAM for its memory figures (milliseconds in a large guest).
#[test]
fn without_stats_no_tables_or_memory_figures() {
    let r = run(&["run", "--kernel", &kernel("hello64")]);
    assert_eq!(r.status, 0, "{}", r.output());
    for needle in ["vCPU 0:", "io-out", "VMM overhead"] {
        assert!(
            !r.stderr.contains(needle),
            "{needle} without --stats: {}",
            r.output()
        );
    }
}

#[test]
fn i8042_reset_exits_zero() {
    let r = run(&["run", "--kernel", &kernel("reset")]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.contains("resetting"), "{}", r.output());
    assert!(r.stderr.contains("guest reset"), "{}", r.output());
}

#[test]
fn real_mode_jump_to_the_reset_vector_is_a_reset() {
    let r = run(&["run", "--kernel", &kernel("biosreset")]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.contains("BIOS reset vector"), "{}", r.output());
    assert!(r.stderr.contains("guest reset"), "{}", r.output());
}

#[test]
fn triple_fault_exits_two_with_a_report() {
    let r = run(&["run", "--kernel", &kernel("triple")]);
    assert_eq!(r.status, 2, "{}", r.output());
    assert!(r.stdout.contains("about to triple fault"), "{}", r.output());
    for needle in [
        "KVM_EXIT_SHUTDOWN (triple fault)",
        "64-bit long mode, CPL 0",
        "ud2",
        "rip=",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle}: {}",
            r.output()
        );
    }
}

#[test]
fn rejected_instruction_is_reported_with_its_bytes() {
    let r = run(&[
        "run",
        "--kernel",
        &kernel("badinsn"),
        "--emulator-gaps",
        "report",
    ]);
    if host_is_emulated() {
        assert_eq!(r.status, 2, "{}", r.output());
        for needle in [
            "KVM_EXIT_INTERNAL_ERROR",
            "emulation failure",
            "f3 4c 0f b8 e3  popcnt r12,rbx",
        ] {
            assert!(
                r.stderr.contains(needle),
                "missing {needle}: {}",
                r.output()
            );
        }
    } else {
        assert_eq!(r.status, 0, "{}", r.output());
    }
}

#[test]
fn rejected_instruction_is_completed_by_default() {
    // Natively on VT-x/AMD-V; completed by the VMM on emulation-only hosts.
    let r = run(&["run", "--kernel", &kernel("badinsn")]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("popcnt ran natively: 0000000000000008"),
        "{}",
        r.output()
    );
}

#[test]
fn smp_bsp_wakes_every_ap() {
    let r = run(&["run", "--kernel", &kernel("smp"), "--cpus", "4"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout
            .contains("cpu 00 up (BSP), vCPUs: 0000000000000004"),
        "{}",
        r.output()
    );
    for id in 1..4 {
        assert!(
            r.stdout.contains(&format!("cpu {id:02x} up\n")),
            "AP {id}: {}",
            r.output()
        );
    }
    assert!(r.stdout.contains("all cpus up"), "{}", r.output());
}

#[test]
fn serial_output_to_a_file_or_nowhere() {
    let dir = scratch("serial");
    let file = dir.join("console.txt");
    let r = run(&[
        "run",
        "--kernel",
        &kernel("hello64"),
        "--serial",
        file.to_str().unwrap(),
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(!r.stdout.contains("Hello"), "{}", r.output());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Hello from a 64-bit guest"), "{text}");
    let r = run(&["run", "--kernel", &kernel("hello64"), "--serial", "none"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.is_empty(), "{}", r.output());
}

#[test]
fn sigterm_stops_a_busy_guest_with_143() {
    // The echo guest spins polling the UART: the vCPU is in KVM_RUN.
    let r = run_and_signal(
        &["run", "--kernel", &kernel("echo")],
        Some(vec![]),
        "ready",
        libc::SIGTERM,
    );
    assert_eq!(r.status, 128 + libc::SIGTERM, "{}", r.output());
    assert!(
        r.stderr.contains("stopped by host signal 15"),
        "{}",
        r.output()
    );
}

#[test]
fn sigint_stops_a_halted_guest_with_130() {
    // cli; hlt: the vCPU sleeps in the kernel until kicked.
    let r = run_and_signal(
        &["run", "--kernel", &kernel("halt"), "--cpus", "2"],
        None,
        "halting",
        libc::SIGINT,
    );
    assert_eq!(r.status, 128 + libc::SIGINT, "{}", r.output());
}

/// A bzImage whose payload is `hello64` compressed with Linux's legacy LZ4
/// framing (or gzip), and whose own 64-bit entry runs `bzstub`.
fn test_bzimage(gzip: bool) -> Vec<u8> {
    let vmlinux = std::fs::read(guest("hello64")).unwrap();
    let payload = if gzip {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&vmlinux).unwrap();
        e.finish().unwrap()
    } else {
        let mut p = 0x184c_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(&vmlinux);
        p.extend((block.len() as u32).to_le_bytes());
        p.extend(block);
        p.extend((vmlinux.len() as u32).to_le_bytes());
        p
    };
    let mut pm = vec![0x90u8; 0x200];
    pm.extend(std::fs::read(guest("bzstub.bin")).unwrap());
    vmm::boot::elf_image::bzimage(&pm, &payload)
}

#[test]
fn bzimage_is_decompressed_on_the_host() {
    let dir = scratch("bzimage");
    for (gzip, format) in [(false, "lz4"), (true, "gzip")] {
        let path = dir.join(format!("bzImage-{format}"));
        std::fs::write(&path, test_bzimage(gzip)).unwrap();
        let r = run(&["run", "--kernel", path.to_str().unwrap()]);
        assert_eq!(r.status, 0, "{}", r.output());
        assert!(
            r.stdout.contains("Hello from a 64-bit guest"),
            "{}",
            r.output()
        );
        let said = format!("{format} payload decompressed on the host");
        assert!(r.stderr.contains(&said), "{}", r.output());
    }
}

#[test]
fn bzimage_guest_decompress_path_enters_at_0x200() {
    let dir = scratch("bzimage-guest");
    let path = dir.join("bzImage");
    std::fs::write(&path, test_bzimage(false)).unwrap();
    let r = run(&[
        "run",
        "--kernel",
        path.to_str().unwrap(),
        "--boot-path",
        "guest-decompress",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout
            .contains("bzImage entered through its own 64-bit entry"),
        "{}",
        r.output()
    );
    assert!(
        r.stderr.contains("decompressed by the guest (requested)"),
        "{}",
        r.output()
    );
}

/// How many times `--stats` says the VMM handled `what`.
fn handled<'r>(r: &'r common::Run, what: &str) -> &'r str {
    r.stderr
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no count for {what}: {}", r.output()))
}

#[test]
fn kernel_page_faults_pass_the_syscall_repair_breakpoint_once_each() {
    let r = run(&["run", "--kernel", &kernel("pfstep"), "--stats"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("page faults handled: 0000000000000005"),
        "{}",
        r.output()
    );
    if host_is_emulated() {
        assert_eq!(handled(&r, "page fault (let through)"), "5");
    }
}

/// A user-mode `syscall` enters the kernel at LSTAR, at CPL0, with the
/// registers SYSCALL sets (RCX the return address) and the user stack.
/// On emulation-only hosts the CPU leaves the entry at CPL3 and Tsubame's
/// repair finishes it; with the repair off the guest sees the page fault
/// at LSTAR instead, which shows the first run went through the repair.
#[test]
fn a_user_syscall_enters_the_kernel_at_cpl0() {
    let r = run(&["run", "--kernel", &kernel("usersyscall"), "--stats"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains(
            "syscall entered: cs 0000000000000010 rax 000000000000002a \
             rcx 0000000000200007 rsp 00000000003ff000"
        ),
        "{}",
        r.output()
    );
    if host_is_emulated() {
        assert_eq!(handled(&r, "syscall (repaired)"), "1");
        let off = run(&[
            "run",
            "--kernel",
            &kernel("usersyscall"),
            "--emulator-gaps",
            "report",
        ]);
        assert!(
            off.stdout.contains("page fault seen by the guest at")
                && off
                    .stdout
                    .contains("error 0000000000000015 cs 0000000000000033"),
            "{}",
            off.output()
        );
    }
}

/// `rep outsb` and `rep insb` on COM1 move every byte: KVM gives the VMM
/// one exit of size × count bytes, and each byte is one UART access.
#[test]
fn string_port_io_moves_every_byte() {
    let r = run_with(
        &["run", "--kernel", &kernel("stringio")],
        Some(b"ABCDEFG".to_vec()),
        Duration::from_secs(30),
    );
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.contains("string out ok\n"), "{}", r.output());
    assert!(r.stdout.contains("in: ABCDEFG\n"), "{}", r.output());
}

/// Console output never blocks a vCPU: with stdout a pipe nobody reads
/// (full after 64 KiB), SIGTERM still ends Tsubame at once.
#[test]
fn a_full_stdout_pipe_does_not_stop_sigterm() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let mut child = Command::new(common::tsubame_bin())
        .args(["run", "--kernel", &kernel("spew")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the pipe and the console buffer to fill.
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM with stdout full");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
}
