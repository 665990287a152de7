//! Issue 10's TLS fault: static busybox process starts on 2 vCPUs, none
//! of which may fault. On an emulation-only host a start costs seconds,
//! so this runs by hand:
//! `cargo test --release --features test-hooks --test linux_process_starts -- --ignored --nocapture`
//! (`TSUBAME_STARTS` sets the count, 500 by default; `TSUBAME_CMDLINE`
//! adds kernel parameters, for experiments).

mod common;

use common::{boot_debian, busybox_initramfs, scratch};
use std::time::Duration;

fn init(starts: u32) -> String {
    format!(
        "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo TSUBAME-INIT: starting {starts}
/bin/busybox grep -m1 flags /proc/cpuinfo | /bin/busybox sed 's/^/TSUBAME-INIT: /'
/bin/busybox dmesg | /bin/busybox grep -i -e isolation -e pcid -e fsgsbase -e 'Command line' -e 'TLB' -e 'kvm' | /bin/busybox sed 's/^/TSUBAME-INIT: /'
faults=0
i=0
while [ $i -lt {starts} ]; do
    /bin/busybox true
    [ $? -eq 139 ] && faults=$((faults + 1))
    i=$((i + 1))
    if [ $((i % 25)) -eq 0 ]; then
        read up idle < /proc/uptime
        echo TSUBAME-INIT: $i starts, $faults faults, uptime $up
    fi
done
echo TSUBAME-INIT: faults=$faults
/bin/busybox reboot -f
"
    )
}

#[test]
#[ignore]
fn static_busybox_starts_on_two_vcpus_never_fault() {
    let starts: u32 = std::env::var("TSUBAME_STARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let extra = std::env::var("TSUBAME_CMDLINE").unwrap_or_default();
    let cmdline = format!("console=ttyS0 {extra}");
    let dir = scratch("linux-process-starts");
    let initrd = busybox_initramfs(&dir, &init(starts));
    let r = boot_debian(
        &initrd,
        "2",
        &["--cmdline", &cmdline],
        Duration::from_secs(u64::from(starts) * 20 + 1200),
    );
    for line in r.stdout.lines() {
        if line.contains("TSUBAME-INIT") || line.contains("segfault") {
            eprintln!("{line}");
        }
    }
    eprintln!("{starts} starts in {:.1} s", r.elapsed.as_secs_f64());
    assert_eq!(r.status, 0, "{}", r.output());
    assert!(
        r.stdout.contains("TSUBAME-INIT: faults=0"),
        "{}",
        r.output()
    );
}
