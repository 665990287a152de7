//! Completing instructions KVM's emulator rejects. On an emulation-only host
//! guest kernel code runs in that emulator, which fails on a handful of
//! instructions (int3, popcnt, crc32, stac/clac, xgetbv, rdtscp,
//! cmpxchg16b, ...) with KVM_EXIT_INTERNAL_ERROR. Here each one is either
//! carried out on the guest's registers and memory, or turned into the
//! exception the guest expects. Decoding is iced-x86's.
//!
//! The logic works on a [`GuestCpu`], so it is tested against the host CPU
//! with a fake guest; `vcpu::gaps` provides the KVM-backed one.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_ARITH: u64 = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;
const CR4_OSXSAVE: u64 = 1 << 18;

pub const VECTOR_BP: u8 = 3;
pub const VECTOR_UD: u8 = 6;
pub const VECTOR_GP: u8 = 13;
pub const VECTOR_MF: u8 = 16;
/// x87 status word: an unmasked exception is pending.
const FSW_ES: u16 = 1 << 7;

/// A guest memory access that could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemFault {
    pub gva: u64,
    pub write: bool,
}

/// What completing an instruction needs from the vCPU.
pub trait GuestCpu {
    fn regs(&mut self) -> &mut kvm_regs;
    fn sregs(&mut self) -> &kvm_sregs;
    fn read(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    fn write(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault>;
    /// Atomic 16-byte compare-exchange; `Err(current)` when it differs.
    fn cmpxchg16(
        &mut self,
        gva: u64,
        expected: u128,
        new: u128,
    ) -> Result<Result<(), u128>, MemFault>;
    fn xcr0(&mut self) -> u64;
    /// (TSC, TSC_AUX) as the guest sees them.
    fn tsc_aux(&mut self) -> (u64, u32);
    /// The x87 status word.
    fn fpu_status(&mut self) -> u16;
    fn mxcsr(&mut self) -> u32;
    fn set_mxcsr(&mut self, value: u32);
}

/// MXCSR bits that may be set; others make `ldmxcsr` fault.
const MXCSR_MASK: u32 = 0xffff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Registers and memory updated, RIP past the instruction.
    Completed,
    /// Deliver this exception (RIP already where the guest expects it).
    Inject { vector: u8, error_code: Option<u32> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no completion for {0}")]
    Unsupported(String),
    #[error("guest memory at {:#x} ({}) is not accessible", .0.gva, if .0.write { "write" } else { "read" })]
    Memory(MemFault),
    #[error("cannot address operand {0} of {1}")]
    Operand(u32, String),
}

impl From<MemFault> for Error {
    fn from(f: MemFault) -> Error {
        Error::Memory(f)
    }
}

fn gpr_slot(regs: &mut kvm_regs, full: Register) -> Option<&mut u64> {
    Some(match full {
        Register::RAX => &mut regs.rax,
        Register::RBX => &mut regs.rbx,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        Register::RIP => &mut regs.rip,
        _ => return None,
    })
}

/// The high-byte registers (AH, CH, DH, BH) live in bits 8..16.
fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// Reads a general-purpose register of any width.
pub fn get_reg(regs: &mut kvm_regs, r: Register) -> Option<u64> {
    let v = *gpr_slot(regs, r.full_register())?;
    Some(match r.size() {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => v & 0xffff,
        1 if is_high_byte(r) => (v >> 8) & 0xff,
        1 => v & 0xff,
        _ => return None,
    })
}

/// Writes a general-purpose register with x86 semantics: 32-bit writes
/// zero the upper half, 16- and 8-bit writes merge.
pub fn set_reg(regs: &mut kvm_regs, r: Register, value: u64) -> Option<()> {
    let size = r.size();
    let high = is_high_byte(r);
    let slot = gpr_slot(regs, r.full_register())?;
    *slot = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        2 => (*slot & !0xffff) | (value & 0xffff),
        1 if high => (*slot & !0xff00) | ((value & 0xff) << 8),
        1 => (*slot & !0xff) | (value & 0xff),
        _ => return None,
    };
    Some(())
}

/// The instruction's mnemonic in lower case ("popcnt"), as the crash
/// report's disassembly spells it. Through the formatter, not `Mnemonic`'s
/// `Debug`: that table is 30 KiB of string pointers that every start of
/// the (position-independent) binary would relocate.
pub(super) fn mnemonic_name(insn: &Instruction) -> String {
    use iced_x86::{FormatMnemonicOptions, Formatter, IntelFormatter};
    let mut name = String::new();
    IntelFormatter::new().format_mnemonic_options(
        insn,
        &mut name,
        FormatMnemonicOptions::NO_PREFIXES,
    );
    name
}

/// The address of memory operand `op`.
fn address(insn: &Instruction, op: u32, cpu: &mut dyn GuestCpu) -> Result<u64, Error> {
    let regs = *cpu.regs();
    let sregs = *cpu.sregs();
    let mut regs = regs;
    insn.virtual_address(op, 0, |reg, _, _| match reg {
        Register::FS => Some(sregs.fs.base),
        Register::GS => Some(sregs.gs.base),
        Register::ES => Some(sregs.es.base),
        Register::CS => Some(sregs.cs.base),
        Register::SS => Some(sregs.ss.base),
        Register::DS => Some(sregs.ds.base),
        r => get_reg(&mut regs, r),
    })
    .ok_or_else(|| Error::Operand(op, mnemonic_name(insn)))
}

/// Reads operand `op` (register or memory) as an integer of its width.
fn read_operand(
    insn: &Instruction,
    op: u32,
    cpu: &mut dyn GuestCpu,
) -> Result<(u64, usize), Error> {
    match insn.op_kind(op) {
        OpKind::Register => {
            let r = insn.op_register(op);
            let v =
                get_reg(cpu.regs(), r).ok_or_else(|| Error::Operand(op, mnemonic_name(insn)))?;
            Ok((v, r.size()))
        }
        OpKind::Memory => {
            let size = insn.memory_size().size();
            let gva = address(insn, op, cpu)?;
            let mut buf = [0u8; 8];
            let size = size.min(8);
            cpu.read(gva, &mut buf[..size])?;
            Ok((u64::from_le_bytes(buf), size))
        }
        _ => Err(Error::Operand(op, mnemonic_name(insn))),
    }
}

fn width_mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

/// CRC-32C (Castagnoli), reflected, no pre/post inversion: what SSE4.2's
/// `crc32` instruction accumulates, `bytes` little-endian bytes of `data`.
pub fn crc32c(mut crc: u32, data: u64, bytes: usize) -> u32 {
    for b in data.to_le_bytes().iter().take(bytes) {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    crc
}

fn advance(cpu: &mut dyn GuestCpu, insn: &Instruction) {
    cpu.regs().rip = insn.next_ip();
}

/// Carries out `insn` (decoded at the guest's RIP) on `cpu`.
pub fn complete(insn: &Instruction, cpu: &mut dyn GuestCpu) -> Result<Outcome, Error> {
    match insn.mnemonic() {
        // A trap: the guest's #BP handler sees RIP after the int3.
        Mnemonic::Int3 => {
            advance(cpu, insn);
            Ok(Outcome::Inject {
                vector: VECTOR_BP,
                error_code: None,
            })
        }
        Mnemonic::Popcnt => {
            let (src, size) = read_operand(insn, 1, cpu)?;
            let count = (src & width_mask(size)).count_ones() as u64;
            let regs = cpu.regs();
            set_reg(regs, insn.op_register(0), count)
                .ok_or_else(|| Error::Operand(0, mnemonic_name(insn)))?;
            regs.rflags &= !RFLAGS_ARITH;
            if src & width_mask(size) == 0 {
                regs.rflags |= RFLAGS_ZF;
            }
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Crc32 => {
            let (src, size) = read_operand(insn, 1, cpu)?;
            let dst = insn.op_register(0);
            let acc =
                get_reg(cpu.regs(), dst).ok_or_else(|| Error::Operand(0, mnemonic_name(insn)))?;
            let crc = crc32c(acc as u32, src, size);
            // The result is 32 bits; a 64-bit destination is zero-extended.
            set_reg(cpu.regs(), dst, u64::from(crc))
                .ok_or_else(|| Error::Operand(0, mnemonic_name(insn)))?;
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        // fwait: raise a pending unmasked x87 exception, else nothing.
        Mnemonic::Wait => {
            if cpu.fpu_status() & FSW_ES != 0 {
                return Ok(Outcome::Inject {
                    vector: VECTOR_MF,
                    error_code: None,
                });
            }
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Ldmxcsr => {
            let (value, _) = read_operand(insn, 0, cpu)?;
            let value = value as u32;
            if value & !MXCSR_MASK != 0 {
                return Ok(Outcome::Inject {
                    vector: VECTOR_GP,
                    error_code: Some(0),
                });
            }
            cpu.set_mxcsr(value);
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Stmxcsr => {
            let gva = address(insn, 0, cpu)?;
            let value = cpu.mxcsr();
            cpu.write(gva, &value.to_le_bytes())?;
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Stac | Mnemonic::Clac => {
            let regs = cpu.regs();
            if insn.mnemonic() == Mnemonic::Stac {
                regs.rflags |= RFLAGS_AC;
            } else {
                regs.rflags &= !RFLAGS_AC;
            }
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Xgetbv => {
            if cpu.sregs().cr4 & CR4_OSXSAVE == 0 {
                return Ok(Outcome::Inject {
                    vector: VECTOR_UD,
                    error_code: None,
                });
            }
            if cpu.regs().rcx as u32 != 0 {
                return Ok(Outcome::Inject {
                    vector: VECTOR_GP,
                    error_code: Some(0),
                });
            }
            let xcr0 = cpu.xcr0();
            let regs = cpu.regs();
            regs.rax = xcr0 & 0xffff_ffff;
            regs.rdx = xcr0 >> 32;
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Rdtscp => {
            let (tsc, aux) = cpu.tsc_aux();
            let regs = cpu.regs();
            regs.rax = tsc & 0xffff_ffff;
            regs.rdx = tsc >> 32;
            regs.rcx = u64::from(aux);
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        Mnemonic::Cmpxchg16b => {
            let gva = address(insn, 0, cpu)?;
            if gva % 16 != 0 {
                return Ok(Outcome::Inject {
                    vector: VECTOR_GP,
                    error_code: Some(0),
                });
            }
            let regs = *cpu.regs();
            let expected = u128::from(regs.rax) | (u128::from(regs.rdx) << 64);
            let new = u128::from(regs.rbx) | (u128::from(regs.rcx) << 64);
            let result = cpu.cmpxchg16(gva, expected, new)?;
            let regs = cpu.regs();
            match result {
                Ok(()) => regs.rflags |= RFLAGS_ZF,
                Err(current) => {
                    regs.rflags &= !RFLAGS_ZF;
                    regs.rax = current as u64;
                    regs.rdx = (current >> 64) as u64;
                }
            }
            advance(cpu, insn);
            Ok(Outcome::Completed)
        }
        _ => Err(Error::Unsupported(mnemonic_name(insn))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::arch::asm;

    /// A guest with flat memory at address 0.
    struct FakeCpu {
        regs: kvm_regs,
        sregs: kvm_sregs,
        mem: Vec<u8>,
        xcr0: u64,
        fsw: u16,
        mxcsr: u32,
    }

    impl FakeCpu {
        fn new() -> FakeCpu {
            FakeCpu {
                regs: kvm_regs {
                    rip: 0x1000,
                    rflags: 0x2,
                    ..Default::default()
                },
                sregs: kvm_sregs::default(),
                mem: vec![0; 0x10000],
                xcr0: 0x7,
                fsw: 0,
                mxcsr: 0x1f80,
            }
        }

        fn run(&mut self, bytes: &[u8]) -> Result<Outcome, Error> {
            let insn = Decoder::with_ip(64, bytes, self.regs.rip, DecoderOptions::NONE).decode();
            assert!(!insn.is_invalid());
            complete(&insn, self)
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
            let a = gva as usize;
            let src = self
                .mem
                .get(a..a + buf.len())
                .ok_or(MemFault { gva, write: false })?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
            let a = gva as usize;
            let dst = self
                .mem
                .get_mut(a..a + data.len())
                .ok_or(MemFault { gva, write: true })?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn cmpxchg16(
            &mut self,
            gva: u64,
            expected: u128,
            new: u128,
        ) -> Result<Result<(), u128>, MemFault> {
            let mut cur = [0u8; 16];
            self.read(gva, &mut cur)?;
            let cur = u128::from_le_bytes(cur);
            if cur == expected {
                self.write(gva, &new.to_le_bytes())?;
                Ok(Ok(()))
            } else {
                Ok(Err(cur))
            }
        }
        fn xcr0(&mut self) -> u64 {
            self.xcr0
        }
        fn tsc_aux(&mut self) -> (u64, u32) {
            (0x1234_5678_9abc_def0, 0x42)
        }
        fn fpu_status(&mut self) -> u16 {
            self.fsw
        }
        fn mxcsr(&mut self) -> u32 {
            self.mxcsr
        }
        fn set_mxcsr(&mut self, value: u32) {
            self.mxcsr = value;
        }
    }

    /// `popcnt` and its flags, as the host CPU computes them.
    fn host_popcnt(x: u64) -> (u64, u64) {
        let (out, flags): (u64, u64);
        // SAFETY: popcnt reads a register and writes a register and flags.
        unsafe {
            asm!("popcnt {o}, {i}", "pushfq", "pop {f}", o = out(reg) out, i = in(reg) x, f = out(reg) flags);
        }
        (out, flags & RFLAGS_ARITH)
    }

    #[test]
    fn popcnt_matches_the_host() {
        if !std::arch::is_x86_feature_detected!("popcnt") {
            return;
        }
        for x in [
            0u64,
            1,
            0xff,
            0x8000_0000_0000_0001,
            u64::MAX,
            0x1234_5678_9abc_def0,
        ] {
            let mut c = FakeCpu::new();
            c.regs.rbx = x;
            c.regs.rflags |= RFLAGS_CF | RFLAGS_SF;
            // popcnt rax, rbx
            assert_eq!(
                c.run(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]).unwrap(),
                Outcome::Completed
            );
            let (want, flags) = host_popcnt(x);
            assert_eq!(c.regs.rax, want, "{x:#x}");
            assert_eq!(c.regs.rflags & RFLAGS_ARITH, flags, "{x:#x}");
            assert_eq!(c.regs.rip, 0x1005);
        }
    }

    #[test]
    fn popcnt_32bit_from_memory_zero_extends() {
        let mut c = FakeCpu::new();
        c.regs.rax = u64::MAX;
        c.regs.rdi = 0x2000;
        c.mem[0x2000..0x2008].copy_from_slice(&0xffff_ffff_0000_000fu64.to_le_bytes());
        // popcnt eax, dword [rdi]
        c.run(&[0xf3, 0x0f, 0xb8, 0x07]).unwrap();
        assert_eq!(c.regs.rax, 4);
        assert_eq!(c.regs.rip, 0x1004);
    }

    #[test]
    fn crc32_matches_the_host_for_every_width() {
        if !std::arch::is_x86_feature_detected!("sse4.2") {
            return;
        }
        use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
        for (crc, data) in [
            (0u32, 0u64),
            (0xffff_ffff, 0x0123_4567_89ab_cdef),
            (0x1234_5678, 0xdead_beef),
        ] {
            // SAFETY: SSE4.2 is present (checked above).
            let host = unsafe {
                [
                    _mm_crc32_u8(crc, data as u8),
                    _mm_crc32_u16(crc, data as u16),
                    _mm_crc32_u32(crc, data as u32),
                    _mm_crc32_u64(u64::from(crc), data) as u32,
                ]
            };
            // crc32 eax, bl / ax, bx (66) / eax, ebx / rax, rbx (REX.W)
            let encodings: [&[u8]; 4] = [
                &[0xf2, 0x0f, 0x38, 0xf0, 0xc3],
                &[0x66, 0xf2, 0x0f, 0x38, 0xf1, 0xc3],
                &[0xf2, 0x0f, 0x38, 0xf1, 0xc3],
                &[0xf2, 0x48, 0x0f, 0x38, 0xf1, 0xc3],
            ];
            for (bytes, want) in encodings.iter().zip(host) {
                let mut c = FakeCpu::new();
                c.regs.rax = 0xaaaa_aaaa_0000_0000 | u64::from(crc);
                c.regs.rbx = data;
                c.run(bytes).unwrap();
                assert_eq!(
                    c.regs.rax,
                    u64::from(want),
                    "{bytes:02x?} crc {crc:#x} data {data:#x}"
                );
                assert_eq!(c.regs.rip, 0x1000 + bytes.len() as u64);
            }
        }
    }

    #[test]
    fn int3_is_a_trap_to_vector_3() {
        let mut c = FakeCpu::new();
        assert_eq!(
            c.run(&[0xcc]).unwrap(),
            Outcome::Inject {
                vector: VECTOR_BP,
                error_code: None
            }
        );
        assert_eq!(c.regs.rip, 0x1001);
    }

    #[test]
    fn stac_and_clac_toggle_ac() {
        let mut c = FakeCpu::new();
        c.run(&[0x0f, 0x01, 0xcb]).unwrap();
        assert_ne!(c.regs.rflags & RFLAGS_AC, 0);
        c.run(&[0x0f, 0x01, 0xca]).unwrap();
        assert_eq!(c.regs.rflags & RFLAGS_AC, 0);
        assert_eq!(c.regs.rip, 0x1006);
    }

    #[test]
    fn xgetbv_reads_xcr0_or_faults() {
        let mut c = FakeCpu::new();
        assert_eq!(
            c.run(&[0x0f, 0x01, 0xd0]).unwrap(),
            Outcome::Inject {
                vector: VECTOR_UD,
                error_code: None
            },
            "#UD without CR4.OSXSAVE"
        );
        c.sregs.cr4 |= CR4_OSXSAVE;
        c.xcr0 = 0x2_0000_0007;
        c.run(&[0x0f, 0x01, 0xd0]).unwrap();
        assert_eq!((c.regs.rax, c.regs.rdx), (7, 2));
        c.regs.rcx = 5;
        assert!(matches!(
            c.run(&[0x0f, 0x01, 0xd0]).unwrap(),
            Outcome::Inject {
                vector: VECTOR_GP,
                ..
            }
        ));
    }

    #[test]
    fn fwait_is_a_nop_unless_an_x87_exception_is_pending() {
        let mut c = FakeCpu::new();
        assert_eq!(c.run(&[0x9b]).unwrap(), Outcome::Completed);
        assert_eq!(c.regs.rip, 0x1001);
        c.fsw = FSW_ES;
        assert_eq!(
            c.run(&[0x9b]).unwrap(),
            Outcome::Inject {
                vector: VECTOR_MF,
                error_code: None
            }
        );
        assert_eq!(c.regs.rip, 0x1001, "#MF is a fault: RIP stays");
    }

    #[test]
    fn ldmxcsr_and_stmxcsr_move_mxcsr_through_memory() {
        let mut c = FakeCpu::new();
        c.regs.rsp = 0x3000;
        c.mem[0x3004..0x3008].copy_from_slice(&0x9fc0u32.to_le_bytes());
        // ldmxcsr [rsp+4], as in Linux's kernel_fpu_begin
        assert_eq!(
            c.run(&[0x0f, 0xae, 0x54, 0x24, 0x04]).unwrap(),
            Outcome::Completed
        );
        assert_eq!(c.mxcsr, 0x9fc0);
        assert_eq!(c.regs.rip, 0x1005);
        // stmxcsr [rsp+8]
        c.run(&[0x0f, 0xae, 0x5c, 0x24, 0x08]).unwrap();
        assert_eq!(&c.mem[0x3008..0x300c], &0x9fc0u32.to_le_bytes());
        // Reserved bits: #GP, MXCSR unchanged.
        c.mem[0x3004..0x3008].copy_from_slice(&0x1_0000u32.to_le_bytes());
        assert!(matches!(
            c.run(&[0x0f, 0xae, 0x54, 0x24, 0x04]).unwrap(),
            Outcome::Inject {
                vector: VECTOR_GP,
                ..
            }
        ));
        assert_eq!(c.mxcsr, 0x9fc0);
    }

    #[test]
    fn rdtscp_loads_tsc_and_aux() {
        let mut c = FakeCpu::new();
        c.run(&[0x0f, 0x01, 0xf9]).unwrap();
        assert_eq!(
            (c.regs.rax, c.regs.rdx, c.regs.rcx),
            (0x9abc_def0, 0x1234_5678, 0x42)
        );
    }

    #[test]
    fn cmpxchg16b_succeeds_then_fails_like_the_cpu() {
        let mut c = FakeCpu::new();
        c.regs.rdi = 0x4000;
        let old: u128 = 0x2222_2222_2222_2222_1111_1111_1111_1111;
        c.mem[0x4000..0x4010].copy_from_slice(&old.to_le_bytes());
        c.regs.rax = 0x1111_1111_1111_1111;
        c.regs.rdx = 0x2222_2222_2222_2222;
        c.regs.rbx = 0xbbbb;
        c.regs.rcx = 0xcccc;
        // lock cmpxchg16b [rdi]
        let insn = [0xf0, 0x48, 0x0f, 0xc7, 0x0f];
        c.run(&insn).unwrap();
        assert_ne!(c.regs.rflags & RFLAGS_ZF, 0);
        let now = u128::from_le_bytes(c.mem[0x4000..0x4010].try_into().unwrap());
        assert_eq!(now, 0xcccc_u128 << 64 | 0xbbbb);
        // Again: memory no longer matches RDX:RAX, which get its value.
        c.regs.rip = 0x1000;
        c.run(&insn).unwrap();
        assert_eq!(c.regs.rflags & RFLAGS_ZF, 0);
        assert_eq!((c.regs.rax, c.regs.rdx), (0xbbbb, 0xcccc));
        // Misaligned: #GP.
        c.regs.rdi = 0x4008;
        assert!(matches!(
            c.run(&insn).unwrap(),
            Outcome::Inject {
                vector: VECTOR_GP,
                ..
            }
        ));
    }

    #[test]
    fn unknown_instructions_and_bad_memory_are_errors() {
        let mut c = FakeCpu::new();
        // pxor xmm0, xmm1
        assert_eq!(
            c.run(&[0x66, 0x0f, 0xef, 0xc1]).unwrap_err(),
            Error::Unsupported("pxor".into())
        );
        c.regs.rdi = 0xffff_0000;
        assert!(matches!(
            c.run(&[0xf3, 0x0f, 0xb8, 0x07]).unwrap_err(),
            Error::Memory(MemFault { write: false, .. })
        ));
    }

    /// The formatter's names are `Mnemonic`'s in lower case, without
    /// prefixes (completion counts and errors are keyed by them).
    #[test]
    fn mnemonic_names_are_the_lower_case_mnemonics() {
        let cases: [&[u8]; 6] = [
            &[0xf3, 0x0f, 0xb8, 0x07],       // popcnt eax, [rdi]
            &[0xf2, 0x0f, 0x38, 0xf1, 0xc1], // crc32 eax, ecx
            &[0xf3, 0xa4],                   // rep movsb
            &[0xf0, 0x01, 0x07],             // lock add [rdi], eax
            &[0x0f, 0x01, 0xd0],             // xgetbv
            &[0xcc],                         // int3
        ];
        for bytes in cases {
            let insn = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode();
            let want = format!("{:?}", insn.mnemonic()).to_lowercase();
            assert_eq!(mnemonic_name(&insn), want, "{bytes:x?}");
        }
    }

    #[test]
    fn register_views_follow_x86_rules() {
        let mut r = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        assert_eq!(get_reg(&mut r, Register::AH), Some(0x77));
        assert_eq!(get_reg(&mut r, Register::AX), Some(0x7788));
        set_reg(&mut r, Register::AH, 0xaa).unwrap();
        assert_eq!(r.rax, 0x1122_3344_5566_aa88);
        set_reg(&mut r, Register::EAX, 0x1).unwrap();
        assert_eq!(r.rax, 1, "32-bit writes zero-extend");
        set_reg(&mut r, Register::R9W, 0xffff).unwrap();
        assert_eq!(r.r9, 0xffff);
    }
}
