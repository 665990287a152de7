//! Debian's kernel booted once to user space, the Firecracker way: the
//! machine from `--config-file` (2 vCPUs, kernel irqchip, busybox init,
//! virtio-blk with ext4, vsock) driven over the API socket, paused 30 s
//! during boot and resumed, then paused again, snapshotted and killed with
//! SIGKILL. Every case here then restores that snapshot in a new process
//! (another PID, another API socket, another vsock socket) instead of
//! booting again, which on an emulation-only host takes many minutes. This
//! is CI's one Linux boot to user space, in the default `kernel` irqchip
//! mode, the fastest here; `split` mode boots to user space by hand
//! (`linux_irqchip.rs`, `--ignored`: 13-30 minutes on an emulation-only
//! host) and is covered in CI by tiny guests (`irqchip.rs`, `snapshot.rs`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::api::{ok, state, wait_for_socket, Vmm};
use common::{debian_kernel, host_is_emulated, scratch};

/// One Linux guest at a time (two emulated kernels on 2 cores would
/// skew each other's clocks).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Modules, in load order, and where Debian keeps them.
const MODULES: &[(&str, &str)] = &[
    ("virtio_ring", "drivers/virtio"),
    ("virtio", "drivers/virtio"),
    ("virtio_mmio", "drivers/virtio"),
    ("virtio_blk", "drivers/block"),
    ("vsock", "net/vmw_vsock"),
    ("vmw_vsock_virtio_transport_common", "net/vmw_vsock"),
    ("vmw_vsock_virtio_transport", "net/vmw_vsock"),
];

/// Loads the drivers, mounts the disk, starts the vsock echo server, then
/// runs what arrives on the console, line by line.
const INIT: &str = "/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
    /bin/busybox insmod /lib/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 60 ]; do
    /bin/busybox sleep 1
    i=$((i + 1))
done
/bin/busybox mount -t ext4 /dev/vda /mnt
/bin/vsockecho &
while read -r line; do
    case \"$line\" in *IO-APIC*|*XT-PIC*) echo \"TSUBAME-INIT: $line\";; esac
done < /proc/interrupts
echo TSUBAME-INIT: ready
while read -r line; do eval \"$line\"; done
";

const BOOT_LIMIT: Duration = Duration::from_secs(1800);
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// The snapshot every case restores.
struct Booted {
    dir: PathBuf,
    state: PathBuf,
    mem: PathBuf,
    /// The disk as the snapshot knows it, and a copy of it as it was then
    /// (each restore starts from the copy: the guest has it mounted).
    disk: PathBuf,
    golden: PathBuf,
    boot_out: String,
    boot_err: String,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn boot_and_snapshot() -> Booted {
    let kernel = debian_kernel();
    let dir = scratch("linux-snap");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .expect("mkfs.ext4 (e2fsprogs; .ci/run installs it)");
    assert!(mkfs.success());
    let modules = common::debian_modules(&kernel);
    let mut extra: Vec<(String, PathBuf)> = MODULES
        .iter()
        .map(|(m, sub)| {
            (
                format!("lib/{m}.ko"),
                modules.join(sub).join(format!("{m}.ko")),
            )
        })
        .collect();
    for p in ["fpcheck", "sysrate", "vsockecho"] {
        extra.push((format!("bin/{p}"), common::guest(p)));
    }
    let extra: Vec<(&str, PathBuf)> = extra.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    let initrd = common::initramfs_with(&dir, &common::init_script(INIT), &extra);
    let sock = dir.join("boot.sock");
    let file = dir.join("vm.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}","initrd_path":"{}","boot_args":"console=ttyS0"}},
                "machine-config":{{"vcpu_count":2,"mem_size_mib":128}},
                "drives":[{{"drive_id":"data","path_on_host":"{}","is_root_device":false,"is_read_only":false}}],
                "vsock":{{"guest_cid":3,"uds_path":"{}"}}}}"#,
            s(&kernel),
            s(&initrd),
            s(&disk),
            s(&dir.join("boot-v.sock"))
        ),
    )
    .unwrap();
    let start = Instant::now();
    let (vmm, input) = Vmm::start_with_input(&[
        "--config-file",
        s(&file),
        "--api-sock",
        s(&sock),
        "--landlock-rule",
        &format!("path={},access=rw", s(&dir)),
    ]);
    wait_for_socket(&sock);
    // Paused where the kernel is busy with RCU grace periods in flight:
    // without KVM_KVMCLOCK_CTRL this 30 s pause is reported as an RCU
    // stall ("rcu_preempt detected stalls ... t=7512 jiffies"), seen here
    // with the ioctl taken out.
    vmm.wait_for("Switched to clocksource kvm-clock", STEP_LIMIT);
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(state(&sock), "Paused");
    let before = vmm.out().len();
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(vmm.out().len(), before, "console output while paused");
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));

    vmm.wait_for("TSUBAME-INIT: ready", BOOT_LIMIT);
    vmm.wait_for("vsockecho listening", STEP_LIMIT);
    eprintln!(
        "booted to user space in {:.1} s (30 s of it paused)",
        start.elapsed().as_secs_f64()
    );
    // The guest now waits in `read` on its console: a quiet moment.
    std::thread::sleep(Duration::from_secs(2));
    ok(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    let (state, mem) = (dir.join("linux.snap"), dir.join("linux.mem"));
    let t = Instant::now();
    ok(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(&format!(
            r#"{{"snapshot_path":"{}","mem_file_path":"{}"}}"#,
            s(&state),
            s(&mem)
        )),
    );
    eprintln!(
        "snapshot of 128 MiB written in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let golden = dir.join("disk.golden");
    std::fs::copy(&disk, &golden).unwrap();
    let boot_out = vmm.out();
    let boot_err = vmm.err();
    vmm.signal(libc::SIGKILL);
    let (code, _, _) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, 128 + libc::SIGKILL);
    drop(input);
    Booted {
        dir,
        state,
        mem,
        disk,
        golden,
        boot_out,
        boot_err,
    }
}

fn booted() -> &'static Booted {
    static BOOTED: OnceLock<Booted> = OnceLock::new();
    BOOTED.get_or_init(boot_and_snapshot)
}

/// A restored guest with its console input and API socket.
struct Restored {
    vmm: Vmm,
    input: ChildStdin,
    vsock: PathBuf,
    sock: PathBuf,
    started: Instant,
    /// Console output before the current command (echoes are skipped).
    mark: usize,
}

fn restore(b: &Booted, name: &str, extra: &[&str]) -> Restored {
    std::fs::copy(&b.golden, &b.disk).unwrap();
    let sock = b.dir.join(format!("{name}.sock"));
    let vsock = b.dir.join(format!("{name}-v.sock"));
    let _ = std::fs::remove_file(&sock);
    let started = Instant::now();
    let mut args = vec![
        "restore",
        "--snapshot",
        s(&b.state),
        "--mem",
        s(&b.mem),
        "--resume",
        "--api-sock",
        s(&sock),
        "--vsock-socket",
        s(&vsock),
    ];
    args.extend_from_slice(extra);
    let (mut vmm, input) = Vmm::start_with_input(&args);
    vmm.wait_for_api(&sock);
    Restored {
        vmm,
        input,
        vsock,
        sock,
        started,
        mark: 0,
    }
}

impl Restored {
    /// Types `line` on the console and waits for `marker` in what follows.
    /// Markers are written `TSUBAME-""CMD` in commands, so the console's
    /// echo of the typed line never matches.
    fn command(&mut self, line: &str, marker: &str) -> String {
        self.mark = self.vmm.out().len();
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let start = Instant::now();
        loop {
            let out = self.vmm.out();
            // The answer counts once its line is whole: the console's
            // output can arrive cut anywhere, even just after the marker.
            if let Some(i) = out[self.mark..].find(marker) {
                let rest = &out[self.mark + i + marker.len()..];
                if let Some((line, _)) = rest.split_once('\n') {
                    return line.trim_end_matches('\r').to_string();
                }
            }
            assert!(
                start.elapsed() < STEP_LIMIT,
                "no {marker:?} after {line:?}:\n{out}\n{}",
                self.vmm.err()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The hybrid vsock handshake and one exchange with the guest's echo.
fn vsock_echo(path: &Path, port: u32, text: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut ok_line = String::new();
    r.read_line(&mut ok_line)?;
    if !ok_line.starts_with("OK ") {
        return Err(std::io::Error::other(format!("handshake: {ok_line:?}")));
    }
    s.write_all(text.as_bytes())?;
    let mut answer = String::new();
    r.read_to_string(&mut answer)?;
    Ok(answer)
}

/// No stall reports, and no user process killed by a fault (the kernel
/// logs "segfault at" for each).
fn no_stalls(out: &str) {
    for stall in [
        "segfault at",
        "soft lockup",
        "rcu_sched self-detected stall",
        "rcu: INFO",
        "detected stalls",
        "watchdog: BUG",
    ] {
        assert!(!out.contains(stall), "{stall:?} after restore:\n{out}");
    }
}

#[test]
fn debian_kernel_restored_after_kill_9_answers_its_console_disk_and_vsock() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let b = booted();
    let mut g = restore(b, "restored", &[]);
    let answer = g.command("echo TSUBAME-\"\"CMD: $((6*7))", "TSUBAME-CMD: ");
    let first_answer = g.started.elapsed();
    assert_eq!(answer, "42");
    eprintln!(
        "restore to a console answer: {:.2} s",
        first_answer.as_secs_f64()
    );

    // vsock: the host side of every connection died with the old process;
    // the guest's listener is still there, reached through the new socket
    // at the first try (the guest has answered its console already).
    let echoed = vsock_echo(&g.vsock, 5000, "ping")
        .unwrap_or_else(|e| panic!("vsock after restore: {e}\n{}", g.vmm.out()));
    assert_eq!(echoed, "echo: ping");

    let done = g.command(
        "echo restored > /mnt/after && /bin/busybox sync && /bin/busybox umount /mnt && echo TSUBAME-\"\"CMD: unmounted",
        "TSUBAME-CMD: ",
    );
    assert_eq!(done, "unmounted", "{}", g.vmm.out());
    g.input.write_all(b"/bin/busybox poweroff -f\n").unwrap();
    let (code, out, err) = g.vmm.wait(STEP_LIMIT);
    assert_eq!(code, 0, "{out}\n{err}");
    no_stalls(&out);
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /after"])
        .arg(&b.disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "restored\n", "{out}");
    let fsck = std::process::Command::new("e2fsck")
        .args(["-n", "-f"])
        .arg(&b.disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// The boot itself (from the config file, the 30 s pause), then
/// user space in a restored guest, which ends on the API's Ctrl-Alt-Del.
#[test]
fn debian_kernel_user_space_checks_in_a_restored_guest() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let b = booted();
    assert!(b.boot_out.contains("TSUBAME-INIT: ready"));
    // The file's machine is the one built, and Linux routed its
    // interrupts through the IOAPIC (KVM's, in this mode).
    assert!(b.boot_err.contains("irqchip: kernel"), "{}", b.boot_err);
    assert!(
        b.boot_out.contains("TSUBAME-INIT:") && b.boot_out.contains("IO-APIC"),
        "no IO-APIC line:\n{}",
        b.boot_out
    );
    assert!(
        !b.boot_out.contains("XT-PIC"),
        "an XT-PIC line with an IOAPIC:\n{}",
        b.boot_out
    );
    no_stalls(&b.boot_out);
    let mut g = restore(b, "checks", &["--stats"]);
    let n = g.command(
        "/bin/busybox nproc > /tmp/n; read n < /tmp/n; echo TSUBAME-\"\"CMD: $n",
        "TSUBAME-CMD: ",
    );
    assert_eq!(n, "2");
    let mem = g.command(
        "/bin/busybox grep MemTotal /proc/meminfo > /tmp/m; read m < /tmp/m; echo TSUBAME-\"\"CMD: $m",
        "TSUBAME-CMD: MemTotal:",
    );
    let kib: u64 = mem.trim().trim_end_matches("kB").trim().parse().unwrap();
    assert!(kib > 64 * 1024 && kib <= 128 * 1024, "MemTotal {kib} kB");
    let sha = g.command(
        "/bin/busybox dd if=/dev/zero of=/tmp/z bs=1024 count=64 2>/dev/null; /bin/busybox sha256sum /tmp/z > /tmp/s; read s < /tmp/s; echo TSUBAME-\"\"CMD: $s",
        "TSUBAME-CMD: ",
    );
    // sha256 of 64 KiB of zeros, as the host computes it.
    assert!(sha.starts_with(&host_sha256_of_zeros()), "{sha}");
    // Two processes keep their own XMM registers across context switches.
    let fp = g.command(
        // `wait` for these two only: vsockecho runs on in the background.
        "/bin/fpcheck > /tmp/f1 & p=$!; /bin/fpcheck > /tmp/f2 & q=$!; wait $p $q; read a < /tmp/f1; read b < /tmp/f2; echo TSUBAME-\"\"CMD: $a $b",
        "TSUBAME-CMD: ",
    );
    assert_eq!(fp, "fpcheck ok fpcheck ok");
    // Issue 10: static glibc start-up faulted about once in 15 starts on
    // 2 vCPUs of an emulation-only host (its TLS block read back as
    // zeros); 30 starts catch that 87 % of the time. The by-hand test
    // with 500 is `linux_process_starts.rs`.
    let starts = g.command(
        "f=0; i=0; while [ $i -lt 30 ]; do /bin/busybox true; [ $? -eq 139 ] && f=$((f + 1)); i=$((i + 1)); done; echo TSUBAME-\"\"CMD: $i starts, $f faults",
        "TSUBAME-CMD: ",
    );
    assert_eq!(starts, "30 starts, 0 faults", "{}", g.vmm.out());
    let rate = g.command(
        "/bin/sysrate > /tmp/r; read r < /tmp/r; echo TSUBAME-\"\"CMD: $r",
        "TSUBAME-CMD: ",
    );
    eprintln!("syscall probe after restore: {rate}");
    assert!(rate.contains("syscalls"), "{rate}");
    // The shell init leaves the kernel's Ctrl-Alt-Del action as it is:
    // restart at once, through the restored i8042.
    ok(
        &g.sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    );
    let (code, out, err) = g.vmm.wait(STEP_LIMIT);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("guest reset"), "{err}");
    assert!(err.contains("restored 2 vCPU(s)"), "{err}");
    if host_is_emulated() {
        // User syscalls after the restore went through the syscall repair,
        // whose breakpoint the restore armed again.
        assert!(err.contains("syscall (repaired)"), "{err}");
    }
    no_stalls(&out);
}

fn host_sha256_of_zeros() -> String {
    let dir = scratch("zeros");
    let zeros = dir.join("zeros");
    std::fs::write(&zeros, vec![0u8; 64 * 1024]).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&zeros)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
