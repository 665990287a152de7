//! `tsubame bench repstring`: what a guest kernel's `rep` string
//! instruction costs per element of each size. On an emulation-only host
//! KVM's emulator steps such an instruction one element at a time, so
//! clearing or copying a page a byte at a time (`rep stosb`/`movsb`, which
//! Linux picks when CPUID has ERMS or FSRM) takes eight times the steps of
//! a quadword at a time (`stosq`/`movsq`, its REP_GOOD path): the reason
//! such hosts' guests get `clearcpuid=erms,fsrm`. A tiny kernel clears or
//! copies 4 KiB a number of times each way, timed from the host.

use std::path::Path;

use iced_x86::code_asm::*;

use super::{median, power_off, timed_tiny_run, write_guest, AsmResult, BenchArgs, LOAD_ADDR};

/// Pages cleared or copied per run.
const PAGES: u32 = 500;
const PAGE: u32 = 4096;
const SRC: u64 = 0x20_0000;
const DST: u64 = 0x30_0000;

/// One way of clearing or copying a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Stosb,
    Stosq,
    Movsb,
    Movsq,
}

impl Op {
    const ALL: [Op; 4] = [Op::Stosb, Op::Stosq, Op::Movsb, Op::Movsq];

    fn name(self) -> &'static str {
        match self {
            Op::Stosb => "rep stosb",
            Op::Stosq => "rep stosq",
            Op::Movsb => "rep movsb",
            Op::Movsq => "rep movsq",
        }
    }

    fn element(self) -> u32 {
        match self {
            Op::Stosb | Op::Movsb => 1,
            Op::Stosq | Op::Movsq => 8,
        }
    }
}

/// `pages` times: 4 KiB cleared or copied with `op`; then power off.
fn page_loop_code(op: Op, pages: u32) -> AsmResult<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    a.mov(r8d, pages)?;
    a.set_label(&mut top)?;
    a.mov(rdi, DST)?;
    a.mov(rsi, SRC)?;
    a.mov(ecx, PAGE / op.element())?;
    a.xor(eax, eax)?;
    match op {
        Op::Stosb => a.rep().stosb()?,
        Op::Stosq => a.rep().stosq()?,
        Op::Movsb => a.rep().movsb()?,
        Op::Movsq => a.rep().movsq()?,
    }
    a.dec(r8d)?;
    a.jnz(top)?;
    power_off(&mut a)?;
    a.assemble(LOAD_ADDR)
}

/// Microseconds per page of one run of `kernel`.
fn per_page(kernel: &Path) -> Result<f64, String> {
    let (took, _) = timed_tiny_run(kernel)?;
    Ok(took.as_secs_f64() * 1e6 / f64::from(PAGES))
}

pub(crate) fn bench_repstring(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let host = vmm::kvm::Hypervisor::open(Path::new("/dev/kvm"))
        .map_err(|e| e.to_string())?
        .host;
    let mut guests = vec![];
    for op in Op::ALL {
        let code = page_loop_code(op, PAGES).map_err(|e| e.to_string())?;
        guests.push(write_guest(dir, op.name(), &code).map_err(|e| e.to_string())?);
    }
    // The four in turn, so that each run's drift meets all of them.
    let mut times: Vec<Vec<f64>> = vec![vec![]; Op::ALL.len()];
    let runs = args.runs.max(3);
    for _ in 0..runs {
        for (t, guest) in times.iter_mut().zip(&guests) {
            t.push(per_page(guest)?);
        }
    }
    let us: Vec<f64> = times.into_iter().map(median).collect();
    println!(
        "rep string instructions in a guest kernel on this host ({host}): 4 KiB cleared or copied {PAGES} times (median of {runs} runs):"
    );
    for (op, us) in Op::ALL.iter().zip(&us) {
        let steps = f64::from(PAGE / op.element());
        println!(
            "  {:<10} {us:9.1} µs per page   {:6.3} µs per element",
            op.name(),
            us / steps
        );
    }
    println!(
        "  a page a quadword at a time against a byte at a time: clear {:.2}x, copy {:.2}x the speed",
        us[0] / us[1],
        us[2] / us[3]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loop_has_its_rep_instruction_and_count() {
        // rep stosb is f3 aa, rep stosq f3 48 ab, rep movsb f3 a4, rep
        // movsq f3 48 a5; the count is 4096 or 512 (mov ecx, imm32).
        let expect: [(Op, &[u8], u32); 4] = [
            (Op::Stosb, &[0xf3, 0xaa], 4096),
            (Op::Stosq, &[0xf3, 0x48, 0xab], 512),
            (Op::Movsb, &[0xf3, 0xa4], 4096),
            (Op::Movsq, &[0xf3, 0x48, 0xa5], 512),
        ];
        for (op, insn, count) in expect {
            let code = page_loop_code(op, 3).unwrap();
            assert!(code.windows(insn.len()).any(|w| w == insn), "{op:?}");
            let mut mov_ecx = vec![0xb9];
            mov_ecx.extend_from_slice(&count.to_le_bytes());
            assert!(code.windows(5).any(|w| w == mov_ecx), "{op:?} count");
        }
    }
}
