//! `tsubame bench`: what an exit costs through Tsubame's dispatch against a
//! bare KVM_RUN loop, how fast a tiny guest starts, how much memory the VMM
//! adds, and (with `--kernel`) what host-side decompression saves.
//!
//! Guests are assembled here with iced-x86 and wrapped in an in-memory ELF,
//! so the benchmark needs no toolchain. Timings on a shared host are noisy:
//! every figure is the median of several runs, and ratios are taken between
//! runs made side by side in one process.

mod api;
mod confine;
mod dispatch;
mod irqchip;
mod kernel_memory;
mod pfrepair;
mod repstring;
mod snapshot;
mod startup;
mod virtio;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VcpuExit;
use vmm::boot::acpi::AcpiConfig;
use vmm::boot::{self, elf_image, BootConfig, BootPath, BootRegs};
use vmm::config::{SerialConfig, VmConfig};
use vmm::kvm::Hypervisor;
use vmm::vcpu::stats::ExitKind;
use vmm::vm::layout::MemoryLayout;
use vmm::vm::Vm;

pub(crate) const LOAD_ADDR: u64 = 0x10_0000;
const UNROLL: u32 = 16;
const POWER_PORT: u16 = 0x600;
const S5: u8 = (5 << 2) | 0x20;
const MMIO_ADDR: u64 = 0xd000_0000;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    Exits,
    Startup,
    Memory,
    Boot,
    /// virtio-blk request processing against plain pread/pwrite.
    Blk,
    /// virtio-net frames through the device against raw tap reads/writes
    /// (needs root: it makes a tap in a network namespace of its own).
    Net,
    /// A virtio queue notify from a guest, with and without ioeventfd.
    Notify,
    /// The API: start-up to an answering socket, GET / round trip, pause
    /// and resume.
    Api,
    /// Snapshot create, restore and Diff costs against guest memory.
    Snapshot,
    /// Start-up and RSS with seccomp, Landlock and the jailer, against none.
    Confine,
    /// Each `--irqchip` mode: timer ticks through the PIC, a PIO exit.
    Irqchip,
    /// Emulation-only hosts: Tsubame's page-fault breakpoint step against
    /// the host's own cost of the same faults.
    Pfrepair,
    /// A guest kernel's rep string instructions, byte against quadword
    /// elements (why emulation-only hosts' guests get
    /// `clearcpuid=erms,fsrm`).
    Repstring,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Exits per exit-cost run.
    #[arg(long, default_value_t = 50_000)]
    pub exits: u32,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// A bzImage for `boot` (time to the kernel banner with host-side and
    /// with in-guest decompression) and `memory` (peak memory while loading
    /// it, against its vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Give up on a `boot` run after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub boot_timeout: u64,
    /// With `startup`: where each millisecond of Tsubame's start and stop
    /// goes (phase marks from a debug log).
    #[arg(long)]
    pub phases: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitType {
    Pio,
    Mmio,
}

impl ExitType {
    fn name(self) -> &'static str {
        match self {
            ExitType::Pio => "PIO (out 0x80)",
            ExitType::Mmio => "MMIO (store to unowned address)",
        }
    }
}

pub(crate) type AsmResult<T> = Result<T, IcedError>;

/// `count` exits of `kind`, then power off through the ACPI register.
pub(crate) fn exit_loop_code(kind: ExitType, count: u32) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    a.mov(rdi, MMIO_ADDR)?;
    a.mov(ecx, count.div_ceil(UNROLL))?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for _ in 0..UNROLL {
        match kind {
            ExitType::Pio => a.out(0x80, al)?,
            ExitType::Mmio => a.mov(dword_ptr(rdi), eax)?,
        }
    }
    a.dec(ecx)?;
    a.jnz(top)?;
    power_off(&mut a)?;
    a.assemble(LOAD_ADDR)
}

/// One byte to COM1, then power off: the smallest useful guest.
pub(crate) fn hello_code() -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    a.mov(dx, 0x3f8u32)?;
    a.mov(al, b'T' as u32)?;
    a.out(dx, al)?;
    a.mov(al, b'\n' as u32)?;
    a.out(dx, al)?;
    power_off(&mut a)?;
    a.assemble(LOAD_ADDR)
}

pub(crate) fn power_off(a: &mut CodeAssembler) -> AsmResult<()> {
    a.mov(dx, POWER_PORT as u32)?;
    a.mov(al, S5 as u32)?;
    a.out(dx, al)?;
    a.hlt()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One in-process run of a tiny guest that powers off (16 MiB, no serial),
/// on a thread of its own: its outcome and how long it ran.
pub(crate) fn timed_tiny_run(kernel: &Path) -> Result<(Duration, vmm::RunOutcome), String> {
    on_own_thread(|| {
        let mut cfg = VmConfig::new(kernel);
        cfg.serial = SerialConfig::None;
        cfg.memory_mib = 16;
        let machine = vmm::vm::builder::build(&cfg).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let outcome = machine.run(None);
        let took = start.elapsed();
        if outcome.reason != vmm::StopReason::PowerOff {
            return Err(format!(
                "{} ended with: {}",
                kernel.display(),
                outcome.reason
            ));
        }
        Ok((took, outcome))
    })
}

pub(crate) fn write_guest(dir: &Path, name: &str, code: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, elf_image::elf64(code, LOAD_ADDR, None))?;
    Ok(path)
}

/// Runs `f` on a thread of its own: a running machine confines the thread
/// that runs it (Landlock, seccomp), and the bench's main thread must stay
/// free to write guests and start children.
pub(crate) fn on_own_thread<T: Send>(
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| Err(vmm::lifecycle::panic_message(p.as_ref())))
    })
}

/// µs per exit through `tsubame run`'s whole machine: builder, vCPU
/// thread, ExitHandler, buses, stats.
fn tsubame_loop(kernel: &Path, expected: u32) -> Result<f64, String> {
    tsubame_loop_in(kernel, expected, vmm::irqchip::IrqchipMode::Kernel)
}

/// The same, with the interrupt controllers where `mode` puts them.
pub(crate) fn tsubame_loop_in(
    kernel: &Path,
    expected: u32,
    mode: vmm::irqchip::IrqchipMode,
) -> Result<f64, String> {
    on_own_thread(|| tsubame_loop_here(kernel, expected, mode))
}

fn tsubame_loop_here(
    kernel: &Path,
    expected: u32,
    mode: vmm::irqchip::IrqchipMode,
) -> Result<f64, String> {
    let mut cfg = VmConfig::new(kernel);
    cfg.irqchip = mode;
    cfg.serial = SerialConfig::None;
    cfg.memory_mib = 16;
    let machine = vmm::vm::builder::build(&cfg).map_err(|e| e.to_string())?;
    let outcome = machine.run(None);
    if outcome.reason != vmm::StopReason::PowerOff {
        return Err(format!("bench guest ended with: {}", outcome.reason));
    }
    // As the bare loop counts: first KVM_RUN to the power-off exit, not
    // the machine's start or teardown (the in-kernel irqchip's alone is
    // ~20 ms here, a tenth of a 50,000-exit run).
    let took = outcome.guest_time.ok_or("the guest never ran")?;
    let exits = outcome.total.count(ExitKind::IoOut) + outcome.total.count(ExitKind::MmioWrite);
    if exits < u64::from(expected) {
        return Err(format!("only {exits} exits, expected {expected}"));
    }
    Ok(took.as_secs_f64() * 1e6 / exits as f64)
}

/// µs per exit for a bare KVM_RUN loop that only counts, on a VM set up the
/// same way (memory, irqchip, boot state) in this process.
fn bare_loop(kernel_image: &[u8], expected: u32) -> Result<f64, String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let hv = Hypervisor::open(Path::new("/dev/kvm")).map_err(|x| e(&x))?;
    let layout = MemoryLayout::new(16).map_err(|x| e(&x))?;
    let memory = Vm::anonymous_memory(&layout, false).map_err(|x| e(&x))?;
    let vm = Vm::create(
        &hv,
        None,
        layout.clone(),
        memory,
        false,
        false,
        vmm::irqchip::IrqchipMode::Kernel,
    )
    .map_err(|x| e(&x))?;
    let mut vcpu = vm.fd.create_vcpu(0).map_err(|x| e(&x))?;
    let setup = boot::setup(
        &vm.memory,
        &layout,
        &BootConfig {
            kernel_path: Path::new("bench"),
            kernel_image: vmm::boot::KernelImage::Bytes(kernel_image),
            initrd: None,
            cmdline: "",
            boot_path: BootPath::default(),
            acpi: AcpiConfig {
                apic: true,
                cpus: 1,
                devices: vec![],
            },
        },
    )
    .map_err(|x| e(&x))?;
    let cpuid = hv
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|x| e(&x))?;
    vcpu.set_cpuid2(&cpuid).map_err(|x| e(&x))?;
    let regs = BootRegs::new(setup.entry, vcpu.get_sregs().map_err(|x| e(&x))?);
    vcpu.set_sregs(&regs.sregs).map_err(|x| e(&x))?;
    vcpu.set_regs(&regs.regs).map_err(|x| e(&x))?;
    let mut exits = 0u64;
    let start = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(POWER_PORT, _)) => break,
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::MmioWrite(..)) => exits += 1,
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(x) => return Err(e(&x)),
        }
    }
    let took = start.elapsed();
    if exits < u64::from(expected) {
        return Err(format!("only {exits} exits, expected {expected}"));
    }
    Ok(took.as_secs_f64() * 1e6 / exits as f64)
}

fn bench_exits(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    println!(
        "exit cost: {} exits per run, median of {} runs, runs interleaved (ratio: the median of each pair's)",
        args.exits, args.runs
    );
    for kind in [ExitType::Pio, ExitType::Mmio] {
        let code = exit_loop_code(kind, args.exits).map_err(|e| e.to_string())?;
        let image = elf_image::elf64(&code, LOAD_ADDR, None);
        let path = write_guest(dir, "exits", &code).map_err(|e| e.to_string())?;
        let (mut ours, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.runs {
            // Neither always goes first; each pair ran on the same host.
            let (o, b) = if i % 2 == 0 {
                let b = bare_loop(&image, args.exits)?;
                (tsubame_loop(&path, args.exits)?, b)
            } else {
                let o = tsubame_loop(&path, args.exits)?;
                (o, bare_loop(&image, args.exits)?)
            };
            ours.push(o);
            bare.push(b);
            ratios.push(o / b);
        }
        let (o, b) = (median(ours), median(bare));
        println!(
            "  {:<34} tsubame {o:7.2} µs/exit   bare KVM_RUN loop {b:7.2} µs/exit   ratio {:.3} (goal <= 1.03)",
            kind.name(),
            median(ratios)
        );
        if kind == ExitType::Pio {
            confinement_cost(args, &path)?;
        }
    }
    println!("  Tsubame's own dispatch per exit, synthetic exits without KVM (bus, device lock, stats, history):");
    for (name, ns) in dispatch::dispatch_ns(args.runs)? {
        println!("    {name:<32} {ns:6.1} ns");
    }
    Ok(())
}

/// The same loop with every thread confined (seccomp kill, Landlock)
/// against none, runs interleaved.
fn confinement_cost(args: &BenchArgs, kernel: &Path) -> Result<(), String> {
    use vmm::confine::{landlock, LandlockMode, SeccompMode};
    let was = (vmm::confine::seccomp::mode(), landlock::is_on());
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let run = |seccomp, ll| -> Result<f64, String> {
        vmm::confine::set_mode(seccomp).map_err(|e| e.to_string())?;
        landlock::set_mode(ll);
        tsubame_loop(kernel, args.exits)
    };
    let result = (|| {
        for _ in 0..args.runs {
            off.push(run(SeccompMode::Off, LandlockMode::Off)?);
            on.push(run(SeccompMode::Kill, LandlockMode::On)?);
        }
        Ok::<(), String>(())
    })();
    // Back to what the command line asked for.
    vmm::confine::set_mode(was.0).map_err(|e| e.to_string())?;
    landlock::set_mode(if was.1 {
        LandlockMode::On
    } else {
        LandlockMode::Off
    });
    result?;
    let (a, b) = (median(on), median(off));
    println!(
        "  {:<34} confined {a:7.2} µs/exit   unconfined {b:7.2} µs/exit   ratio {:.3} (goal <= 1.01)",
        "PIO, seccomp + Landlock on vs off",
        a / b
    );
    Ok(())
}

/// Runs `cmd` to its end, stdout and stderr collected by this thread;
/// returns its output and the time from spawn to exit. Every start-up
/// figure, Tsubame's and the bare loop's, is timed by this one function:
/// a helper thread started inside the timed span (to read stderr, as
/// Tsubame's runs once had and the bare loop's had not) competed with the
/// child for this host's two CPUs and was counted against Tsubame only.
pub(crate) fn timed_output(cmd: &mut Command) -> Result<(Output, Duration), String> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    Ok((out, start.elapsed()))
}

/// Runs `tsubame ARGS` as a child; returns (its stderr, spawn to exit).
pub(crate) fn child_run(args: &[&str]) -> Result<(String, Duration), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (out, wall) = timed_output(Command::new(exe).args(args))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("child exited with {}: {err}", out.status));
    }
    Ok((err, wall))
}

pub(crate) fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

fn bench_memory(dir: &Path) -> Result<(), String> {
    let code = hello_code().map_err(|e| e.to_string())?;
    let path = write_guest(dir, "hello", &code).map_err(|e| e.to_string())?;
    let (err, _) = child_run(&[
        "run",
        "--kernel",
        &path.to_string_lossy(),
        "--stats",
        "--log-level",
        "warn",
    ])?;
    let peak = number_after(&err, "peak RSS").ok_or("no memory line")?;
    let guest = number_after(&err, "guest RAM resident").ok_or("no memory line")?;
    let overhead = number_after(&err, "VMM overhead").ok_or("no memory line")?;
    let private = number_after(&err, "private").ok_or("no memory line")?;
    let file = number_after(&err, "file-backed").ok_or("no memory line")?;
    println!("memory, tiny guest, 128 MiB configured:");
    println!("  peak RSS {peak} KiB, guest RAM touched {guest} KiB");
    println!(
        "  VMM overhead {overhead} KiB = {:.2} MiB (goal <= 3 MiB)",
        overhead / 1024.0
    );
    println!(
        "    of which, at exit: private {private} KiB (this VMM's own), file-backed {file} KiB (binary and libraries, shared between VMMs)"
    );
    Ok(())
}

/// Seconds until the kernel's banner ("Linux version") on the console.
fn time_to_banner(kernel: &Path, path: &str, timeout: u64) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args([
            "run",
            "--kernel",
            &kernel.to_string_lossy(),
            "--boot-path",
            path,
        ])
        .args([
            "--cmdline",
            "console=ttyS0 earlyprintk=serial",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = loop {
        if start.elapsed() > Duration::from_secs(timeout) {
            break None;
        }
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break None,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("Linux version") {
                    break Some(start.elapsed().as_secs_f64());
                }
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.ok_or_else(|| format!("{path}: no banner within {timeout} s"))
}

fn bench_boot(args: &BenchArgs) -> Result<(), String> {
    let kernel = args
        .kernel
        .as_deref()
        .ok_or("bench boot needs --kernel PATH (a bzImage)")?;
    let host = time_to_banner(kernel, "host-decompress", args.boot_timeout)?;
    println!("boot to the kernel banner, {}:", kernel.display());
    println!("  host-side decompression   {host:10.3} s");
    let guest = time_to_banner(kernel, "guest-decompress", args.boot_timeout)?;
    println!("  in-guest decompression    {guest:10.3} s");
    println!(
        "  saved                     {:10.3} s ({:.1}x faster)",
        guest - host,
        guest / host
    );
    Ok(())
}

pub fn main(args: BenchArgs) -> ExitCode {
    log::set_max_level(log::LevelFilter::Warn);
    let dir = std::env::temp_dir().join(format!("tsubame-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("tsubame: bench: {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    let result = (|| {
        if matches!(args.which, Which::All | Which::Exits) {
            bench_exits(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Startup) {
            startup::bench_startup(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Memory) {
            bench_memory(&dir)?;
            if let Some(kernel) = &args.kernel {
                kernel_memory::bench_kernel_memory(&dir, kernel, args.runs)?;
            }
        }
        if matches!(args.which, Which::All | Which::Blk) {
            virtio::bench_blk(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Net) {
            virtio::bench_net(&args, args.which == Which::All)?;
        }
        if matches!(args.which, Which::All | Which::Notify) {
            virtio::bench_notify(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Api) {
            api::bench_api(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Snapshot) {
            snapshot::bench_snapshot(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Confine) {
            confine::bench_confine(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Irqchip) {
            irqchip::bench_irqchip(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Pfrepair) {
            pfrepair::bench_pfrepair(&args, &dir)?;
        }
        if matches!(args.which, Which::All | Which::Repstring) {
            repstring::bench_repstring(&args, &dir)?;
        }
        if args.which == Which::Boot || (args.which == Which::All && args.kernel.is_some()) {
            bench_boot(&args)?;
        }
        Ok::<(), String>(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsubame: bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_assemble() {
        let code = exit_loop_code(ExitType::Pio, 64).unwrap();
        // 16 `out 0x80, al` (e6 80) in a row.
        assert!(code
            .windows(32)
            .any(|w| w == [0xe6, 0x80].repeat(16).as_slice()));
        assert!(!exit_loop_code(ExitType::Mmio, 64).unwrap().is_empty());
        assert!(!hello_code().unwrap().is_empty());
    }

    #[test]
    fn numbers_are_parsed_from_logs() {
        let text = "[  0.02 DEBUG vmm::trace] phase vcpu 0 first KVM_RUN 24.045ms";
        assert_eq!(number_after(text, "first KVM_RUN"), Some(24.045));
        assert_eq!(number_after(text, "missing"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
