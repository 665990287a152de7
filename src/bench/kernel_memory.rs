//! `tsubame bench memory --kernel BZIMAGE`: the VMM's peak memory beyond
//! guest RAM while it puts a real kernel into guest memory: from the
//! bzImage (its payload decompressed on the host as it is loaded) and from
//! the same kernel's vmlinux (read in place, the baseline: what loading
//! costs with nothing to decompress). Each run is stopped by SIGTERM once
//! the kernel is loaded, so the guest has touched little beyond it; its
//! debug log's phase marks also give main() to the kernel loaded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{median, number_after};

pub(crate) fn bench_kernel_memory(dir: &Path, bzimage: &Path, runs: usize) -> Result<(), String> {
    let image = std::fs::read(bzimage).map_err(|e| format!("{}: {e}", bzimage.display()))?;
    let hdr = vmm::boot::kernel::bzimage_header(&image)
        .map_err(|e| format!("{}: {e}", bzimage.display()))?;
    let (start, len) = vmm::boot::kernel::payload_range(&hdr);
    let payload = image
        .get(start as usize..(start + len) as usize)
        .ok_or("the bzImage's payload runs past its end")?;
    let (format, vmlinux) = vmm::boot::decompress::decompress(payload)
        .map_err(|e| format!("{}: {e}", bzimage.display()))?;
    let elf = dir.join("vmlinux");
    std::fs::write(&elf, &vmlinux).map_err(|e| format!("{}: {e}", elf.display()))?;
    drop((image, vmlinux));

    let (mut from_bz, mut from_elf, mut guest) = (vec![], vec![], vec![]);
    let (mut bz_ms, mut elf_ms) = (vec![], vec![]);
    for _ in 0..runs.max(1) {
        let bz = loaded_memory(bzimage)?;
        from_bz.push(bz.overhead_kib);
        guest.push(bz.guest_kib);
        bz_ms.push(bz.loaded_ms);
        let elf = loaded_memory(&elf)?;
        from_elf.push(elf.overhead_kib);
        elf_ms.push(elf.loaded_ms);
    }
    let (bz, elf_kib) = (median(from_bz), median(from_elf));
    println!(
        "memory, loading {} ({format} bzImage), peak RSS beyond guest RAM (median of {runs}; guest RAM touched {:.0} KiB):",
        bzimage.display(),
        median(guest)
    );
    println!(
        "  bzImage {:8.2} MiB   its vmlinux {:8.2} MiB   ratio {:.2}",
        bz / 1024.0,
        elf_kib / 1024.0,
        bz / elf_kib
    );
    let (bz_ms, elf_ms) = (median(bz_ms), median(elf_ms));
    println!(
        "  main() to kernel loaded: bzImage {bz_ms:.1} ms   its vmlinux {elf_ms:.1} ms   ratio {:.2}",
        bz_ms / elf_ms
    );
    Ok(())
}

struct Loaded {
    overhead_kib: f64,
    guest_kib: f64,
    loaded_ms: f64,
}

/// One `tsubame run` of `kernel`, stopped once it is loaded.
fn loaded_memory(kernel: &Path) -> Result<Loaded, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--log-level", "debug", "run", "--kernel"])
        .arg(kernel)
        .args(["--memory", "256", "--stats", "--cmdline", "console=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (mut log, mut stopped) = (String::new(), false);
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if !stopped && line.contains("] kernel: ") {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) with our own child's pid, not yet waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            stopped = true;
        }
        log += &line;
        log.push('\n');
    }
    child.wait().map_err(|e| e.to_string())?;
    let figure = |name| number_after(&log, name).ok_or_else(|| format!("no {name} in: {log}"));
    Ok(Loaded {
        overhead_kib: figure("VMM overhead")?,
        guest_kib: figure("guest RAM resident")?,
        loaded_ms: figure("phase kernel loaded")?,
    })
}
