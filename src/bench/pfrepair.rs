//! `tsubame bench pfrepair` (emulation-only hosts): what Tsubame's own
//! page-fault path costs. Once a guest writes LSTAR, every guest page
//! fault stops at a breakpoint on the #PF handler, and Tsubame reads the
//! fault frame, decodes the handler's first instruction and steps over it
//! (`vcpu/emulation/syscall.rs`). A tiny kernel takes the same page faults
//! with and without LSTAR written; the difference per fault is Tsubame's
//! share, the rest is the host's emulation of the fault and the handler.

use std::path::Path;

use iced_x86::code_asm::*;

use super::{median, power_off, timed_tiny_run, write_guest, AsmResult, BenchArgs, LOAD_ADDR};

const IDT: u64 = 0x18_0000;
const STACK_TOP: u64 = 0x20_0000;
const MSR_LSTAR: u32 = 0xc000_0082;
/// Above the boot identity map: a load there faults (not present).
const UNMAPPED: u64 = 0x1_0000_0000;
const FAULTS: u32 = 20_000;

/// What each turn of a guest's loop does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// A page fault, skipped by the handler.
    Fault,
    /// A PIO exit (`out 0x80`), which any guest makes.
    Exit,
}

/// `count` page faults, each skipped by a handler that starts with a
/// `nop` (as Linux's does), or `count` PIO exits; with `arm`, LSTAR is
/// written first.
fn fault_loop_code(arm: bool, turn: Turn, count: u32) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut handler = a.create_label();
    let mut entry = a.create_label();
    let mut top = a.create_label();
    a.mov(rsp, STACK_TOP)?;
    // IDT gate 14: present, DPL0, 64-bit interrupt gate, selector 0x10.
    a.mov(rdi, IDT)?;
    a.lea(rax, ptr(handler))?;
    a.mov(word_ptr(rdi + 14 * 16), ax)?;
    a.mov(word_ptr(rdi + 14 * 16 + 2), 0x10u32)?;
    a.mov(word_ptr(rdi + 14 * 16 + 4), 0x8e00u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 14 * 16 + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 14 * 16 + 8), eax)?;
    // The IDTR (limit, base) just below the table.
    a.mov(word_ptr(rdi - 16), 0xfffu32)?;
    a.mov(qword_ptr(rdi - 14), rdi)?;
    a.lidt(ptr(rdi - 16))?;
    if arm {
        a.lea(rax, ptr(entry))?;
        a.xor(edx, edx)?;
        a.mov(ecx, MSR_LSTAR)?;
        a.wrmsr()?;
    }
    a.mov(r12d, count)?;
    a.mov(rsi, UNMAPPED)?;
    a.set_label(&mut top)?;
    match turn {
        Turn::Fault => a.mov(rbx, qword_ptr(rsi))?, // 48 8b 1e: 3 bytes
        Turn::Exit => a.out(0x80, al)?,
    }
    a.dec(r12d)?;
    a.jnz(top)?;
    power_off(&mut a)?;
    a.set_label(&mut handler)?;
    a.nop()?;
    a.add(qword_ptr(rsp + 8), 3)?; // past the faulting load
    a.add(rsp, 8)?; // the error code
    a.iretq()?;
    a.set_label(&mut entry)?;
    a.hlt()?;
    a.assemble(LOAD_ADDR)
}

/// µs per turn of one run of `kernel`, and its breakpoint stops.
fn per_turn(kernel: &Path) -> Result<(f64, u64), String> {
    let (took, outcome) = timed_tiny_run(kernel)?;
    let steps = outcome.total.count(vmm::vcpu::stats::ExitKind::Debug);
    Ok((took.as_secs_f64() * 1e6 / f64::from(FAULTS), steps))
}

pub(crate) fn bench_pfrepair(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let host = vmm::kvm::Hypervisor::open(Path::new("/dev/kvm"))
        .map_err(|e| e.to_string())?
        .host;
    if !host.is_emulated() {
        println!("page-fault repair: not needed on this host ({host}), nothing to measure");
        return Ok(());
    }
    let guest = |arm, turn| -> Result<_, String> {
        let code = fault_loop_code(arm, turn, FAULTS).map_err(|e| e.to_string())?;
        let name = format!(
            "{}-{}",
            if turn == Turn::Fault { "pf" } else { "exit" },
            if arm { "armed" } else { "plain" }
        );
        write_guest(dir, &name, &code).map_err(|e| e.to_string())
    };
    let (armed, plain) = (guest(true, Turn::Fault)?, guest(false, Turn::Fault)?);
    let (exit_armed, exit_plain) = (guest(true, Turn::Exit)?, guest(false, Turn::Exit)?);
    let (mut with, mut without, mut steps) = (vec![], vec![], 0);
    let (mut exits_with, mut exits_without) = (vec![], vec![]);
    for _ in 0..args.runs.max(3) {
        without.push(per_turn(&plain)?.0);
        let (us, n) = per_turn(&armed)?;
        with.push(us);
        steps = n;
        exits_without.push(per_turn(&exit_plain)?.0);
        exits_with.push(per_turn(&exit_armed)?.0);
    }
    if steps < u64::from(FAULTS) {
        return Err(format!(
            "the armed guest stopped at the breakpoint {steps} times for {FAULTS} faults"
        ));
    }
    let (w, wo) = (median(with), median(without));
    println!(
        "page-fault repair, {FAULTS} guest page faults (median of {} runs):",
        args.runs.max(3)
    );
    println!("  fault and handler, host emulation alone   {wo:8.2} µs per fault");
    println!(
        "  the same with Tsubame's breakpoint step   {w:8.2} µs per fault   {:.2}x; Tsubame's share {:.2} µs",
        w / wo,
        w - wo
    );
    // The breakpoint stays armed while the guest runs: KVM loads the
    // debug registers at every entry, which this host makes costly.
    let (ew, ewo) = (median(exits_with), median(exits_without));
    println!("  a PIO exit, no breakpoint armed           {ewo:8.2} µs per exit");
    println!(
        "  a PIO exit, breakpoint armed              {ew:8.2} µs per exit    {:.2}x; {:.2} µs more per exit while armed",
        ew / ewo,
        ew - ewo
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_guest_assembles_with_a_three_byte_load() {
        let code = fault_loop_code(true, Turn::Fault, 4).unwrap();
        assert!(code.windows(3).any(|w| w == [0x48, 0x8b, 0x1e]));
        assert!(fault_loop_code(false, Turn::Fault, 4).unwrap().len() < code.len());
        let exits = fault_loop_code(true, Turn::Exit, 4).unwrap();
        assert!(exits.windows(2).any(|w| w == [0xe6, 0x80]));
    }
}
