//! Completing what KVM's emulator rejects: random instruction bytes,
//! decoded as a 64-bit CPL0 guest's, and random registers, against a fake
//! vCPU whose memory is a 64 KiB window (accesses outside it fault). The
//! completion must never panic: it completes, injects an exception, or
//! says it cannot.
#![no_main]

use iced_x86::{Decoder, DecoderOptions};
use kvm_bindings::{kvm_regs, kvm_sregs};
use libfuzzer_sys::fuzz_target;
use vmm::vcpu::emulation::complete::{complete, GuestCpu, MemFault};

const WINDOW: u64 = 0x1_0000;

struct FakeCpu {
    regs: kvm_regs,
    sregs: kvm_sregs,
    base: u64,
    mem: Vec<u8>,
    xcr0: u64,
    mxcsr: u32,
}

impl FakeCpu {
    fn range(&self, gva: u64, len: usize, write: bool) -> Result<std::ops::Range<usize>, MemFault> {
        let fault = MemFault { gva, write };
        let off = gva.checked_sub(self.base).ok_or(fault)?;
        let end = off.checked_add(len as u64).ok_or(fault)?;
        if end > WINDOW {
            return Err(fault);
        }
        Ok(off as usize..end as usize)
    }
}

impl GuestCpu for FakeCpu {
    fn regs(&mut self) -> &mut kvm_regs {
        &mut self.regs
    }
    fn sregs(&mut self) -> &kvm_sregs {
        &self.sregs
    }
    fn read(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let r = self.range(gva, buf.len(), false)?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }
    fn write(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
        let r = self.range(gva, data.len(), true)?;
        self.mem[r].copy_from_slice(data);
        Ok(())
    }
    fn cmpxchg16(
        &mut self,
        gva: u64,
        expected: u128,
        new: u128,
    ) -> Result<Result<(), u128>, MemFault> {
        let r = self.range(gva, 16, true)?;
        let cur = u128::from_le_bytes(self.mem[r.clone()].try_into().unwrap());
        if cur != expected {
            return Ok(Err(cur));
        }
        self.mem[r].copy_from_slice(&new.to_le_bytes());
        Ok(Ok(()))
    }
    fn xcr0(&mut self) -> u64 {
        self.xcr0
    }
    fn tsc_aux(&mut self) -> (u64, u32) {
        (0x1234_5678, 1)
    }
    fn fpu_status(&mut self) -> u16 {
        self.regs.rax as u16
    }
    fn mxcsr(&mut self) -> u32 {
        self.mxcsr
    }
    fn set_mxcsr(&mut self, value: u32) {
        self.mxcsr = value;
    }
}

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, v) in b.iter_mut().enumerate() {
        *v = data.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (code, state) = data.split_at(15);
    let mut decoder = Decoder::with_ip(64, code, u64_at(state, 0), DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return;
    }
    let w = |i| u64_at(state, i);
    // Registers often point into the window, so that memory operands land.
    let base = w(1) & !0xfff;
    let near = |v: u64| {
        if v & 1 != 0 {
            base.wrapping_add(v & 0xfff0)
        } else {
            v
        }
    };
    let regs = kvm_regs {
        rax: w(2),
        rbx: near(w(3)),
        rcx: w(4),
        rdx: w(5),
        rsi: near(w(6)),
        rdi: near(w(7)),
        rsp: near(w(8)),
        rbp: near(w(9)),
        r8: w(10),
        r9: w(11),
        r10: w(12),
        r11: w(13),
        r12: w(14),
        r13: w(15),
        r14: w(16),
        r15: w(17),
        rip: w(0),
        rflags: w(18) | 2,
    };
    let mut sregs = kvm_sregs::default();
    sregs.cr0 = 0x8005_0033;
    sregs.cr4 = w(19);
    sregs.efer = 0xd01;
    sregs.cs.l = 1;
    sregs.cs.present = 1;
    sregs.ss.base = 0;
    let mut mem = vec![0u8; WINDOW as usize];
    let n = state.len().min(mem.len());
    mem[..n].copy_from_slice(&state[..n]);
    let mut cpu = FakeCpu {
        regs,
        sregs,
        base,
        mem,
        xcr0: w(20) | 1,
        mxcsr: w(21) as u32,
    };
    let _ = complete(&insn, &mut cpu);
});
