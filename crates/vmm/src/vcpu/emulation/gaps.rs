//! Emulator gaps on emulation-only hosts, seen from the vCPU thread: an
//! emulation failure at CPL0 is decoded and handed to [`complete`]; its
//! result is written back to the vCPU (registers, memory, an injected
//! exception). Used only when the host is such a host.

use std::arch::asm;

use iced_x86::{Decoder, DecoderOptions, Instruction};
use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::super::report::{bitness, cpl, InternalError};
use super::complete::{self, GuestCpu, MemFault, Outcome};
use crate::vm::GuestMemory;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_TSC_AUX: u32 = 0xc000_0103;
const PAGE: u64 = 0x1000;

/// A vCPU seen through [`GuestCpu`]: registers read once, written back if
/// changed; memory through the guest's page tables (KVM_TRANSLATE).
struct KvmCpu<'a> {
    fd: &'a VcpuFd,
    mem: &'a GuestMemory,
    regs: kvm_regs,
    sregs: kvm_sregs,
}

impl KvmCpu<'_> {
    /// Guest-physical address of `gva`, if mapped (and writable for writes).
    fn translate(&self, gva: u64, write: bool) -> Result<u64, MemFault> {
        let fault = MemFault { gva, write };
        let t = self.fd.translate_gva(gva).map_err(|_| fault)?;
        if t.valid == 0 || (write && t.writeable == 0) {
            return Err(fault);
        }
        Ok(t.physical_address)
    }

    /// Splits [gva, gva+len) at page boundaries: (gva, offset, len) chunks.
    fn chunks(gva: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = gva.wrapping_add(done as u64);
            let n = ((PAGE - (at % PAGE)) as usize).min(len - done);
            let chunk = (at, done, n);
            done += n;
            Some(chunk)
        })
    }
}

impl GuestCpu for KvmCpu<'_> {
    fn regs(&mut self) -> &mut kvm_regs {
        &mut self.regs
    }

    fn sregs(&mut self) -> &kvm_sregs {
        &self.sregs
    }

    fn read(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        for (at, off, n) in Self::chunks(gva, buf.len()) {
            let gpa = self.translate(at, false)?;
            self.mem
                .read_slice(&mut buf[off..off + n], GuestAddress(gpa))
                .map_err(|_| MemFault {
                    gva: at,
                    write: false,
                })?;
        }
        Ok(())
    }

    fn write(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
        for (at, off, n) in Self::chunks(gva, data.len()) {
            let gpa = self.translate(at, true)?;
            self.mem
                .write_slice(&data[off..off + n], GuestAddress(gpa))
                .map_err(|_| MemFault {
                    gva: at,
                    write: true,
                })?;
        }
        Ok(())
    }

    fn cmpxchg16(
        &mut self,
        gva: u64,
        expected: u128,
        new: u128,
    ) -> Result<Result<(), u128>, MemFault> {
        let fault = MemFault { gva, write: true };
        let gpa = self.translate(gva, true)?;
        // The caller checked 16-byte alignment, so the 16 bytes sit in one
        // page and one region.
        if !self.mem.check_range(GuestAddress(gpa), 16) {
            return Err(fault);
        }
        let host = self
            .mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| fault)?;
        let (mut lo, mut hi) = (expected as u64, (expected >> 64) as u64);
        let ok: u8;
        // SAFETY: `host` points at 16 bytes of guest RAM, 16-byte aligned
        // (gpa is, and regions are page aligned), mapped for as long as
        // `mem` lives. The guest may access it concurrently; the locked
        // instruction makes the exchange atomic, as on real hardware.
        unsafe {
            asm!(
                "xchg rbx, {new_lo}",
                "lock cmpxchg16b [{ptr}]",
                "sete {ok}",
                "xchg rbx, {new_lo}",
                ptr = in(reg) host,
                new_lo = inout(reg) new as u64 => _,
                ok = out(reg_byte) ok,
                inout("rax") lo,
                inout("rdx") hi,
                in("rcx") (new >> 64) as u64,
            );
        }
        Ok(if ok == 1 {
            Ok(())
        } else {
            Err(u128::from(lo) | (u128::from(hi) << 64))
        })
    }

    fn xcr0(&mut self) -> u64 {
        self.fd
            .get_xcrs()
            .ok()
            .and_then(|x| {
                // KVM fills nr_xcrs; never trust it past the array.
                x.xcrs
                    .get(..x.nr_xcrs as usize)?
                    .iter()
                    .find(|x| x.xcr == 0)
                    .map(|x| x.value)
            })
            .unwrap_or(1)
    }

    fn tsc_aux(&mut self) -> (u64, u32) {
        let entries = [MSR_IA32_TSC, MSR_TSC_AUX].map(|index| kvm_msr_entry {
            index,
            ..Default::default()
        });
        let Ok(mut msrs) = Msrs::from_entries(&entries) else {
            return (0, 0);
        };
        let _ = self.fd.get_msrs(&mut msrs);
        let m = msrs.as_slice();
        (m[0].data, m[1].data as u32)
    }

    fn fpu_status(&mut self) -> u16 {
        self.fd.get_fpu().map(|f| f.fsw).unwrap_or(0)
    }

    fn mxcsr(&mut self) -> u32 {
        self.fd.get_fpu().map(|f| f.mxcsr).unwrap_or(0x1f80)
    }

    fn set_mxcsr(&mut self, value: u32) {
        if let Ok(mut fpu) = self.fd.get_fpu() {
            fpu.mxcsr = value;
            let _ = self.fd.set_fpu(&fpu);
        }
    }
}

/// What happened to an emulation failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Completed or turned into an exception; the mnemonic, for stats.
    Yes(String),
    /// Not ours to handle; why, for the crash report.
    No(String),
}

/// Tries to complete the instruction behind an emulation failure.
pub fn handle_emulation_failure(fd: &VcpuFd, mem: &GuestMemory, ie: &InternalError) -> Handled {
    let Some(bytes) = ie.instruction_bytes() else {
        return Handled::No("no instruction bytes".into());
    };
    let (regs, sregs) = match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        _ => return Handled::No("cannot read registers".into()),
    };
    if cpl(&sregs) != 0 {
        return Handled::No(format!("failure at CPL {}", cpl(&sregs)));
    }
    let mut insn = Instruction::default();
    Decoder::with_ip(bitness(&sregs), &bytes, regs.rip, DecoderOptions::NONE).decode_out(&mut insn);
    if insn.is_invalid() {
        return Handled::No("undecodable instruction".into());
    }
    let mut cpu = KvmCpu {
        fd,
        mem,
        regs,
        sregs,
    };
    let outcome = match complete::complete(&insn, &mut cpu) {
        Ok(o) => o,
        Err(e) => return Handled::No(e.to_string()),
    };
    let name = complete::mnemonic_name(&insn);
    let new_regs = cpu.regs;
    if new_regs != regs {
        if let Err(e) = fd.set_regs(&new_regs) {
            return Handled::No(format!("KVM_SET_REGS: {e}"));
        }
    }
    if let Outcome::Inject { vector, error_code } = outcome {
        if let Err(e) = inject_exception(fd, vector, error_code) {
            return Handled::No(format!("cannot inject exception {vector}: {e}"));
        }
        return Handled::Yes(format!("{name} (#{})", exception_name(vector)));
    }
    Handled::Yes(name)
}

fn exception_name(vector: u8) -> &'static str {
    match vector {
        complete::VECTOR_BP => "BP",
        complete::VECTOR_UD => "UD",
        complete::VECTOR_GP => "GP",
        complete::VECTOR_MF => "MF",
        _ => "?",
    }
}

/// Queues exception `vector` for delivery at the next KVM_RUN.
pub fn inject_exception(
    fd: &VcpuFd,
    vector: u8,
    error_code: Option<u32>,
) -> Result<(), kvm_ioctls::Error> {
    let mut ev = fd.get_vcpu_events()?;
    ev.exception.injected = 1;
    ev.exception.nr = vector;
    ev.exception.has_error_code = u8::from(error_code.is_some());
    ev.exception.error_code = error_code.unwrap_or(0);
    ev.exception.pending = 0;
    ev.exception_has_payload = 0;
    fd.set_vcpu_events(&ev)
}
