//! `tsubame bench irqchip`: what each `--irqchip` mode costs. Per mode: a
//! PIO exit through the whole machine, and a guest idling in `sti; hlt`
//! that takes PIT ticks at 1 kHz through the PIC (the VMM's CPU time per
//! tick, and exits per second), each with its ratio to `kernel` measured
//! in the same run.

use std::path::Path;

use iced_x86::code_asm::*;
use vmm::irqchip::IrqchipMode;

use super::{median, power_off, write_guest, AsmResult, BenchArgs, LOAD_ADDR};

const MODES: [IrqchipMode; 3] = [
    IrqchipMode::Kernel,
    IrqchipMode::Split,
    IrqchipMode::Userspace,
];
/// Where the guest builds its IDT, IDTR (+0x1000) and stack (below
/// +0x3000): identity-mapped, above the image.
const IDT: u64 = 0x20_0000;
const VECTOR: u32 = 0x20;

/// `ticks` PIT interrupts at ~1 kHz through the PIC, handled at vector
/// 0x20 with a non-specific EOI, the guest halted in between.
fn tick_code(ticks: u32) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut handler = a.create_label();
    let gate = VECTOR as u64 * 16;
    // A stack for the interrupt frames (the boot protocol gives none).
    a.mov(rsp, IDT + 0x3000)?;
    a.mov(rdi, IDT)?;
    a.lea(rax, ptr(handler))?;
    a.mov(word_ptr(rdi + gate), ax)?;
    a.mov(word_ptr(rdi + gate + 2), 0x10u32)?;
    a.mov(word_ptr(rdi + gate + 4), 0x8e00u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + gate + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + gate + 8), eax)?;
    a.mov(dword_ptr(rdi + gate + 12), 0u32)?;
    a.mov(word_ptr(rdi + 0x1000u64), 0xfffu32)?;
    a.mov(qword_ptr(rdi + 0x1002u64), rdi)?;
    a.lidt(ptr(rdi + 0x1000u64))?;
    // Both PICs: vectors 0x20/0x28, only IRQ 0 unmasked.
    for (port, value) in [
        (0x20u8, 0x11u32),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 4),
        (0xa1, 2),
        (0x21, 1),
        (0xa1, 1),
        (0x21, 0xfe),
        (0xa1, 0xff),
        // PIT channel 0, mode 2, 1193 (~1 kHz).
        (0x43, 0x34),
        (0x40, 0xa9),
        (0x40, 0x04),
    ] {
        a.mov(al, value)?;
        a.out(port as u32, al)?;
    }
    a.mov(r12d, ticks)?;
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.sti()?;
    a.hlt()?;
    a.cli()?;
    a.test(r12d, r12d)?;
    a.jnz(wait)?;
    a.mov(al, 0x30u32)?; // PIT: mode 0, no count
    a.out(0x43u32, al)?;
    power_off(&mut a)?;
    a.set_label(&mut handler)?;
    let mut done = a.create_label();
    a.test(r12d, r12d)?;
    a.jz(done)?;
    a.dec(r12d)?;
    a.set_label(&mut done)?;
    a.mov(al, 0x20u32)?;
    a.out(0x20u32, al)?;
    a.iretq()?;
    a.assemble(LOAD_ADDR)
}

/// CPU time (user + system) of every child waited for so far, µs.
fn children_cpu_us() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// One run of the tick guest in `mode`: (VMM CPU µs per tick, exits per
/// second, ms of wall time).
fn ticks_run(kernel: &str, mode: IrqchipMode, ticks: u32) -> Result<(f64, f64, f64), String> {
    let before = children_cpu_us();
    let (err, wall) = super::child_run(&[
        "run",
        "--kernel",
        kernel,
        "--irqchip",
        mode.name(),
        "--stats",
    ])?;
    let wall = wall.as_secs_f64();
    let cpu = children_cpu_us() - before;
    let exits = super::number_after(&err, "vCPU 0:").ok_or("no exit count in --stats")?;
    Ok((cpu / f64::from(ticks), exits / wall, wall * 1e3))
}

pub fn bench_irqchip(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let ticks = 500;
    let code = tick_code(ticks).map_err(|e| e.to_string())?;
    let guest = write_guest(dir, "ticks", &code).map_err(|e| e.to_string())?;
    let g = guest.to_string_lossy();
    let exit_code =
        super::exit_loop_code(super::ExitType::Pio, args.exits).map_err(|e| e.to_string())?;
    let exits_guest = write_guest(dir, "exits", &exit_code).map_err(|e| e.to_string())?;
    println!(
        "irqchip modes: {ticks} PIT ticks at 1 kHz through the PIC (child process, --stats), \
         and {} PIO exits in process; median of {} runs, modes interleaved",
        args.exits, args.runs
    );
    // Per mode: CPU per tick, exits/s, wall ms, PIO µs/exit.
    let mut figures: Vec<[Vec<f64>; 4]> = MODES.iter().map(|_| Default::default()).collect();
    for _ in 0..args.runs {
        for (mode, f) in MODES.iter().zip(figures.iter_mut()) {
            let (cpu, rate, wall) = ticks_run(&g, *mode, ticks)?;
            f[0].push(cpu);
            f[1].push(rate);
            f[2].push(wall);
            f[3].push(super::tsubame_loop_in(&exits_guest, args.exits, *mode)?);
        }
    }
    let m: Vec<[f64; 4]> = figures.into_iter().map(|f| f.map(median)).collect();
    for (mode, f) in MODES.iter().zip(&m) {
        println!(
            "  {:<10} {:7.1} µs VMM CPU/tick ({:.2}x kernel)   {:7.0} exits/s idle at 1 kHz   \
             run {:6.1} ms   PIO exit {:6.2} µs ({:.3}x kernel)",
            mode.name(),
            f[0],
            f[0] / m[0][0],
            f[1],
            f[2],
            f[3],
            f[3] / m[0][3],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tick_guest_assembles() {
        assert!(super::tick_code(10).unwrap().len() > 100);
    }
}
