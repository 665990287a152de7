//! The binary's layout (build.rs, link/startup.ld): the code a VM's start
//! and stop run sits together at the front of the text, so that a tiny
//! guest's run makes only part of the binary resident. The kernel maps a
//! file 64 KiB around each page fault: start-up code spread over the whole
//! text (the default layout) made ~80 % of it resident.

mod common;

use std::process::Command;

use common::{guest, run, tsubame_bin};

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} (binutils) cannot run: {e}"));
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (address, size) of the binary's section `name`.
fn section(name: &str) -> Option<(u64, u64)> {
    tool("readelf", &["-SW", tsubame_bin()])
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|s| *s == name)?;
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            Some((hex(f.get(i + 2)?)?, hex(f.get(i + 4)?)?))
        })
}

#[test]
fn start_and_stop_code_is_placed_first() {
    let (start, size) = section(".text.startup_path")
        .expect("no .text.startup_path section: build.rs did not pass link/startup.ld");
    let (text, _) = section(".text").expect("no .text");
    assert!(start < text, "the start-up code must come first");
    assert!(
        size > 256 << 10,
        "only {size} bytes placed: is link/startup.ld stale?"
    );
    let symbols = tool("nm", &["--defined-only", tsubame_bin()]);
    // Functions every run calls: the C library's start, Tsubame's main,
    // the vCPU loop and KVM_RUN's wrapper (names without their hashes).
    for wanted in [
        "__libc_start_main",
        "7tsubame4main17h",
        "3vmm4vcpu3run4Vcpu8run_loop17h",
        "10kvm_ioctls6ioctls4vcpu6VcpuFd3run17h",
    ] {
        let address = symbols
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(_, rest)| rest.ends_with(wanted) || rest.contains(&format!("N{wanted}")))
            .and_then(|(a, _)| u64::from_str_radix(a, 16).ok())
            .unwrap_or_else(|| panic!("{wanted}: no such function in the binary"));
        assert!(
            (start..start + size).contains(&address),
            "{wanted} at {address:#x} is outside the start-up code ({start:#x}+{size:#x})"
        );
    }
}

#[test]
fn a_tiny_guest_makes_under_60_percent_of_the_code_resident() {
    let r = run(&[
        "run",
        "--kernel",
        &guest("hello64").to_string_lossy(),
        "--stats",
    ]);
    assert_eq!(r.status, 0, "{}", r.output());
    let resident: u64 = r
        .stderr
        .split("file-backed ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no file-backed figure: {}", r.output()));
    // The read-only and executable segments: what the file backs.
    let code: u64 = tool("readelf", &["-lW", tsubame_bin()])
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD") && !l.contains("RW"))
        .filter_map(|l| {
            u64::from_str_radix(l.split_whitespace().nth(4)?.trim_start_matches("0x"), 16).ok()
        })
        .sum::<u64>()
        >> 10;
    assert!(
        resident * 100 < code * 60,
        "{resident} KiB of {code} KiB of code resident after a tiny guest's run"
    );
}
