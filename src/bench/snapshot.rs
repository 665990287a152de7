//! `tsubame bench snapshot`: snapshot and restore costs, each against a
//! floor measured in the same run.
//!
//! - Full snapshot create time and memory-file data against guest memory
//!   (128 MiB, 1 GiB, 4 GiB; a fresh guest, and one whose RAM the host
//!   filled to 25 %), against `write()` of the same bytes to a file.
//! - Restore (state file read, machine built, state put back, resumed)
//!   against building and booting the same machine fresh.
//! - Diff snapshot write time against dirty pages, against the Full.

use std::path::Path;
use std::time::Instant;

use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{SerialConfig, VmConfig};
use vmm::persist::save::SnapshotRequest;
use vmm::persist::SnapshotKind;
use vmm::vm::restore::{restore, LoadRequest};
use vmm::{Machine, StopReason};

use super::{median, write_guest, AsmResult, BenchArgs, LOAD_ADDR};

/// Halts for ever with interrupts off.
fn idle_code() -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    a.cli()?;
    a.set_label(&mut top)?;
    a.hlt()?;
    a.jmp(top)?;
    a.assemble(LOAD_ADDR)
}

fn config(kernel: &Path, mib: u64, track: bool) -> VmConfig {
    let mut cfg = VmConfig::new(kernel);
    cfg.serial = SerialConfig::None;
    cfg.memory_mib = mib;
    cfg.track_dirty_pages = track;
    cfg
}

fn end(m: Machine) {
    m.lifecycle()
        .request_stop(StopReason::VmmError("bench done".into()));
    m.discard();
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Fills guest RAM from 2 MiB (above the guest's code) up to `bytes` with
/// non-zero pages, as a guest that used that much memory would.
fn fill(m: &Machine, bytes: u64) -> Result<(), String> {
    let page = [0x5au8; 4096];
    let mut at = 2 << 20; // above the guest's code
    while at < bytes {
        m.memory()
            .write_slice(&page, GuestAddress(at))
            .map_err(|e| e.to_string())?;
        at += 4096;
    }
    Ok(())
}

fn data_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// The floor: the same bytes written to a fresh file with write().
fn write_floor(dir: &Path, bytes: u64, run: usize) -> Result<f64, String> {
    let p = dir.join(format!("floor-{run}.bin"));
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        std::io::Write::write_all(&mut f, &buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let took = ms(t);
    Ok(took)
}

pub fn bench_snapshot(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let kernel = write_guest(dir, "idle", &idle_code().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (st, mem) = (dir.join("b.snap"), dir.join("b.mem"));
    let req = |kind| SnapshotRequest {
        kind,
        state_path: st.clone(),
        mem_path: mem.clone(),
    };
    println!("snapshot (median of {} runs):", args.runs);
    println!(
        "  {:>6} {:>6} {:>10} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "MiB",
        "filled",
        "create ms",
        "mem data",
        "state bytes",
        "floor ms",
        "restore ms",
        "boot ms"
    );
    for mib in [128u64, 1024, 4096] {
        for filled in [0u64, 25] {
            let fill_bytes = mib * (1 << 20) * filled / 100;
            let (mut create, mut restore_ms, mut boot_ms) = (Vec::new(), Vec::new(), Vec::new());
            let (mut data, mut state, mut floor) = (0, 0, Vec::new());
            for run in 0..args.runs {
                // Fresh files each run: truncating the last run's file would
                // wait for its writeback and be counted here.
                let st = dir.join(format!("b{mib}-{filled}-{run}.snap"));
                let mem = dir.join(format!("b{mib}-{filled}-{run}.mem"));
                let req = |kind| SnapshotRequest {
                    kind,
                    state_path: st.clone(),
                    mem_path: mem.clone(),
                };
                let t = Instant::now();
                let m = vmm::vm::builder::build(&config(&kernel, mib, false))
                    .map_err(|e| e.to_string())?;
                boot_ms.push(ms(t));
                fill(&m, fill_bytes)?;
                m.pause()?;
                let t = Instant::now();
                let r = m.snapshot(&req(SnapshotKind::Full))?;
                create.push(ms(t));
                state = r.state_bytes;
                data = data_bytes(&mem);
                end(m);
                floor.push(write_floor(dir, data, run)?);

                let t = Instant::now();
                let load = LoadRequest {
                    state_path: st.clone(),
                    mem_path: mem.clone(),
                    ..LoadRequest::default()
                };
                let m = restore(&config(&kernel, mib, false), &load).map_err(|e| e.to_string())?;
                m.resume()?;
                restore_ms.push(ms(t));
                end(m);
                let _ = std::fs::remove_file(&st);
                let _ = std::fs::remove_file(&mem);
            }
            let floor = median(floor);
            println!(
                "  {mib:>6} {filled:>5}% {:>10.2} {:>9} KiB {state:>12} {floor:>10.2} {:>10.2} {:>8.2}",
                median(create),
                data / 1024,
                median(restore_ms),
                median(boot_ms)
            );
        }
    }
    println!("  (floor: write() of the memory file's data bytes; boot: build and start the same machine fresh)");

    // On an emulation-only host the syscall repair's MSR filter is part of
    // every machine; KVM_X86_SET_MSR_FILTER waits for an SRCU grace period.
    // Without it, what is left is the restore's own work.
    let mut plain = config(&kernel, 128, false);
    plain.complete_gaps = false;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        for (cfg, out) in [
            (config(&kernel, 128, false), &mut with),
            (plain.clone(), &mut without),
        ] {
            let m = vmm::vm::builder::build(&cfg).map_err(|e| e.to_string())?;
            m.pause()?;
            m.snapshot(&req(SnapshotKind::Full))?;
            end(m);
            let load = LoadRequest {
                state_path: st.clone(),
                mem_path: mem.clone(),
                ..LoadRequest::default()
            };
            let t = Instant::now();
            let m = restore(&cfg, &load).map_err(|e| e.to_string())?;
            m.resume()?;
            out.push(ms(t));
            end(m);
        }
    }
    let (with, without) = (median(with), median(without));
    println!(
        "restore, 128 MiB: {with:.2} ms with the emulation-only MSR filter, {without:.2} ms without ({:.2}x)",
        with / without
    );

    println!("Diff snapshot, 1 GiB guest, against a Full of the same guest:");
    let m = vmm::vm::builder::build(&config(&kernel, 1024, true)).map_err(|e| e.to_string())?;
    fill(&m, 256 << 20)?;
    m.pause()?;
    let t = Instant::now();
    m.snapshot(&req(SnapshotKind::Full))?;
    let full = ms(t);
    println!("  Full (256 MiB filled): {full:.2} ms");
    for pages in [0u64, 256, 4096, 65536] {
        m.resume()?;
        fill(&m, (2 << 20) + pages * 4096)?;
        m.pause()?;
        let diff_mem = dir.join(format!("diff-{pages}.mem"));
        let t = Instant::now();
        m.snapshot(&SnapshotRequest {
            kind: SnapshotKind::Diff,
            state_path: st.clone(),
            mem_path: diff_mem.clone(),
        })?;
        let took = ms(t);
        println!(
            "  Diff of {pages:>6} dirty pages: {took:>8.2} ms ({:.3}x the Full), {} KiB data",
            took / full,
            data_bytes(&diff_mem) / 1024
        );
        let _ = std::fs::remove_file(&diff_mem);
    }
    end(m);
    let _ = std::fs::remove_file(&st);
    let _ = std::fs::remove_file(&mem);
    Ok(())
}
