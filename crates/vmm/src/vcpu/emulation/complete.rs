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
#[path = "complete_tests.rs"]
mod tests;
