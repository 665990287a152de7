//! Virtio benchmarks: device-side processing through a host-side ring
//! driver (no guest) against the plain system calls on the same file or
//! tap, and the cost of a queue notify from a guest with and without
//! ioeventfd (here; `blk` and `net` hold the two devices' benchmarks).

mod blk;
mod net;

use std::path::Path;
use std::time::Instant;

use super::{median, write_guest, BenchArgs, LOAD_ADDR, MMIO_ADDR};

pub use blk::bench_blk;
pub use net::bench_net;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Guest RAM as a VM has it by default: no dirty page tracking (it is
/// for Diff snapshots), so device writes mark no bitmap.
const TRACK_DIRTY: bool = false;

/// `count` stores to the QueueNotify register of the virtio device at the
/// first window, then power off.
fn notify_loop_code(count: u32) -> super::AsmResult<Vec<u8>> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    a.mov(rdi, MMIO_ADDR + vmm::devices::virtio::mmio::QUEUE_NOTIFY)?;
    a.xor(eax, eax)?;
    a.mov(ecx, count.div_ceil(super::UNROLL))?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for _ in 0..super::UNROLL {
        a.mov(dword_ptr(rdi), eax)?;
    }
    a.dec(ecx)?;
    a.jnz(top)?;
    super::power_off(&mut a)?;
    a.assemble(LOAD_ADDR)
}

/// µs per notify for a guest with a virtio-rng device.
fn notify_run(kernel: &Path, count: u32, ioeventfd: bool) -> Result<f64, String> {
    super::on_own_thread(|| notify_run_here(kernel, count, ioeventfd))
}

fn notify_run_here(kernel: &Path, count: u32, ioeventfd: bool) -> Result<f64, String> {
    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.serial = vmm::config::SerialConfig::None;
    cfg.memory_mib = 16;
    cfg.rng = true;
    cfg.ioeventfd = ioeventfd;
    let machine = vmm::vm::builder::build(&cfg).map_err(err)?;
    let start = Instant::now();
    let outcome = machine.run(None);
    let took = start.elapsed();
    if outcome.reason != vmm::StopReason::PowerOff {
        return Err(format!("notify guest ended with: {}", outcome.reason));
    }
    Ok(took.as_secs_f64() * 1e6 / f64::from(count))
}

pub fn bench_notify(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let count = args.exits;
    let code = notify_loop_code(count).map_err(err)?;
    let path = write_guest(dir, "notify", &code).map_err(err)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(1) {
        with.push(notify_run(&path, count, true)?);
        without.push(notify_run(&path, count, false)?);
    }
    let (w, wo) = (median(with), median(without));
    println!(
        "virtio queue notify from a guest ({count} per run, median of {}): ioeventfd {w:.2} µs | MMIO exit to the VMM {wo:.2} µs | {:.2}x",
        args.runs,
        wo / w
    );
    Ok(())
}
