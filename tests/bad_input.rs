//! Bad input: each case gets one clear line naming the problem, exit 1, and
//! no panic.

mod common;

use common::{guest, run, scratch};

/// Exit 1, exactly one `tsubame:` error line containing `needle`, no panic.
fn refused(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(r.status, 1, "{}", r.output());
    assert!(!r.stderr.contains("panicked"), "{}", r.output());
    let errors = r.error_lines();
    assert_eq!(errors.len(), 1, "{}", r.output());
    assert!(
        errors[0].contains(needle),
        "want {needle:?}: {}",
        r.output()
    );
    assert!(r.stdout.is_empty(), "{}", r.output());
}

/// Exit 1 with clap's usage message naming `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(r.status, 1, "{}", r.output());
    assert!(!r.stderr.contains("panicked"), "{}", r.output());
    assert!(r.stderr.starts_with("error:"), "{}", r.output());
    assert!(r.stderr.contains(needle), "{}", r.output());
}

fn hello() -> String {
    guest("hello64").to_string_lossy().into_owned()
}

#[test]
fn missing_kernel() {
    refused(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        "kernel /nonexistent/vmlinuz: No such file",
    );
}

#[test]
fn empty_kernel() {
    let p = scratch("empty").join("vmlinuz");
    std::fs::write(&p, b"").unwrap();
    refused(
        &["run", "--kernel", p.to_str().unwrap()],
        "the kernel image is empty",
    );
}

#[test]
fn random_bytes_kernel() {
    let p = scratch("random").join("vmlinuz");
    let bytes: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&p, bytes).unwrap();
    refused(
        &["run", "--kernel", p.to_str().unwrap()],
        "neither an ELF vmlinux nor a bzImage",
    );
}

#[test]
fn truncated_kernel() {
    let p = scratch("truncated").join("vmlinuz");
    let full = std::fs::read(guest("hello64")).unwrap();
    std::fs::write(&p, &full[..200]).unwrap();
    refused(
        &["run", "--kernel", p.to_str().unwrap()],
        "cannot load the kernel",
    );
}

#[test]
fn truncated_bzimage() {
    let p = scratch("truncated-bz").join("bzImage");
    let mut img = vmm::boot::elf_image::bzimage(&[0x90; 0x400], &[0x02, 0x21, 0x4c, 0x18, 1, 2, 3]);
    img.truncate(0x300);
    std::fs::write(&p, img).unwrap();
    refused(&["run", "--kernel", p.to_str().unwrap()], "kernel");
}

#[test]
fn missing_initrd() {
    refused(
        &[
            "run",
            "--kernel",
            &hello(),
            "--initrd",
            "/nonexistent/initrd.img",
        ],
        "initrd /nonexistent/initrd.img",
    );
}

#[test]
fn zero_memory() {
    refused(
        &["run", "--kernel", &hello(), "--memory", "0"],
        "--memory: memory size 0 MiB is too small",
    );
}

#[test]
fn absurd_memory() {
    refused(
        &["run", "--kernel", &hello(), "--memory", "99999999999999"],
        "too large",
    );
}

#[test]
fn memory_beyond_the_host() {
    refused(
        &["run", "--kernel", &hello(), "--memory", "1000000"],
        "more than the host has",
    );
}

#[test]
fn zero_cpus() {
    refused(&["run", "--kernel", &hello(), "--cpus", "0"], "--cpus 0");
}

#[test]
fn too_many_cpus() {
    refused(
        &["run", "--kernel", &hello(), "--cpus", "100000"],
        "--cpus 100000: at most",
    );
}

#[test]
fn non_numbers() {
    usage_error(&["run", "--kernel", &hello(), "--cpus", "two"], "--cpus");
    usage_error(
        &["run", "--kernel", &hello(), "--memory", "lots"],
        "--memory",
    );
}

#[test]
fn unknown_flag() {
    usage_error(&["run", "--kernel", &hello(), "--turbo"], "--turbo");
}

#[test]
fn no_kernel() {
    usage_error(&["run"], "--kernel");
}

#[test]
fn unknown_subcommand() {
    usage_error(&["fly"], "fly");
}

#[test]
fn missing_kvm_device() {
    refused(
        &[
            "run",
            "--kernel",
            &hello(),
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        "/nonexistent/kvm",
    );
}

#[test]
fn overlong_command_line() {
    let long = "x".repeat(5000);
    refused(
        &["run", "--kernel", &hello(), "--cmdline", &long],
        "kernel command line is",
    );
}

#[test]
fn help_exits_zero() {
    let r = run(&["run", "--help"]);
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(r.stdout.contains("Exit status:"), "{}", r.output());
    assert!(r.stdout.contains("128+N"), "{}", r.output());
}

#[test]
fn missing_or_odd_sized_disk_image() {
    refused(
        &[
            "run",
            "--kernel",
            &hello(),
            "--disk",
            "path=/nonexistent/disk.img",
        ],
        "disk image /nonexistent/disk.img: No such file",
    );
    let odd = scratch("odd-disk").join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let arg = format!("path={}", odd.display());
    refused(
        &["run", "--kernel", &hello(), "--disk", &arg],
        "size 1000 is not a multiple of 512",
    );
}

#[test]
fn malformed_disk_option() {
    usage_error(
        &["run", "--kernel", &hello(), "--disk", "readonly=on"],
        "path=FILE is required",
    );
    usage_error(
        &["run", "--kernel", &hello(), "--disk", "path=a,cache=none"],
        "unknown key `cache`",
    );
}

#[test]
fn malformed_net_and_vsock_options() {
    for (arg, needle) in [
        (["--net", "mac=0e:00:00:00:00:01"], "tap=NAME is required"),
        (
            ["--net", "tap=t0,mac=0e:00"],
            "mac=0e:00: expected six hex pairs",
        ),
        (["--net", "tap=t0,mac=01:00:00:00:00:01"], "multicast"),
        (["--vsock", "cid=1,socket=/tmp/v"], "cid=1: 0, 1, 2"),
        (["--vsock", "cid=3"], "socket=PATH is required"),
    ] {
        let mut args = vec!["run", "--kernel", "/nonexistent"];
        args.extend(arg);
        usage_error(&args, needle);
    }
}

#[test]
fn a_tap_that_cannot_be_had() {
    // Names the kernel refuses, before any KVM state exists.
    refused(
        &["run", "--kernel", &hello(), "--net", "tap=bad/name"],
        "tap name `bad/name`",
    );
}
