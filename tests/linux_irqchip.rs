//! Debian's kernel with the other interrupt-controller modes: `split` on 2
//! vCPUs (KVM's LAPICs, Tsubame's IOAPIC, PIC and PIT) boots to user space
//! and reboots; `userspace` (Tsubame's PIC and PIT alone, one vCPU) does
//! the same. On an emulation-only host the split boot takes 5-7 minutes
//! and runs in CI (the in-kernel mode's boots are in `linux.rs` and
//! `linux_snapshot.rs`); the userspace boot, one vCPU, runs by hand (CI
//! covers that mode with tiny guests in `irqchip.rs`):
//! `cargo test --release --features test-hooks --test linux_irqchip -- --ignored`.

mod common;

use common::{boot_debian, busybox_initramfs, scratch};
use std::time::Duration;

const INIT: &str = "/bin/busybox mount -t proc proc /proc
/bin/busybox nproc > /tmp/nproc
read n < /tmp/nproc
echo TSUBAME-INIT: nproc=$n
/bin/busybox grep -E 'IO-APIC|XT-PIC|timer' /proc/interrupts
/bin/busybox reboot -f
";

fn boot(mode: &str, cpus: &str, limit: Duration) {
    let dir = scratch(&format!("linux-irqchip-{mode}"));
    let initrd = busybox_initramfs(&dir, &common::init_script(INIT));
    let r = boot_debian(&initrd, cpus, &["--irqchip", mode, "--stats"], limit);
    eprintln!(
        "--irqchip {mode}, {cpus} vCPU(s): user space and reboot in {:.1} s",
        r.elapsed.as_secs_f64()
    );
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains(&format!("TSUBAME-INIT: nproc={cpus}")),
        "{}",
        r.output()
    );
    assert!(r.stderr.contains("guest reset"), "{}", r.output());
    // The interrupts went where the mode says.
    let want = if mode == "split" { "IO-APIC" } else { "XT-PIC" };
    assert!(
        r.stdout.contains(want),
        "{mode}: no {want} line: {}",
        r.output()
    );
}

#[test]
fn debian_kernel_boots_with_the_split_irqchip_on_two_vcpus() {
    boot("split", "2", Duration::from_secs(1500));
}

#[test]
#[ignore]
fn debian_kernel_boots_with_the_userspace_irqchip_on_one_vcpu() {
    boot("userspace", "1", Duration::from_secs(2400));
}
