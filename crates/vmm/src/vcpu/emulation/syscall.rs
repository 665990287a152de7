//! The `syscall` repair on emulation-only hosts. There, a `syscall` from
//! user mode (which runs natively) lands at LSTAR still at CPL3, and the
//! guest takes a page fault on its own kernel entry (a supervisor page).
//! Tsubame puts a hardware breakpoint on the guest's page-fault handler;
//! when the fault frame says "instruction fetch at LSTAR from user mode",
//! it performs the rest of the SYSCALL transition (kernel CS/SS from STAR,
//! the user RSP kept, RIP = LSTAR) and resumes. Other page faults go on
//! past the handler's first instruction, which Tsubame carries out itself
//! (it is a `nop`, `endbr64`, `clac` or `cld`): RFLAGS.RF, the usual way to
//! step over a breakpoint, is not honoured by this host's emulator, and the
//! breakpoint would fire again for ever. The instruction is decoded at each
//! hit: the kernel rewrites its own entry code (alternatives turn three
//! one-byte nops into one three-byte nop) after the breakpoint is placed.
//!
//! The breakpoint is placed when the guest writes LSTAR (an MSR filter
//! makes that write exit): by then the IDT holds the final handler.
//!
//! Each vCPU ioctl costs about as much as an exit on such a host (~10 µs:
//! the vCPU is loaded and put each time), so a stop uses as few as it
//! can: the registers come with the exit and go back with the next entry
//! (KVM_CAP_SYNC_REGS), the handler's bytes are read at the guest
//! physical address found when the breakpoint was placed (kernel text
//! does not move; LSTAR is written again when a new kernel takes over),
//! and the fault frame (a translation) is read only when CR2 says the
//! fault may be the broken `syscall`. An ordinary page fault then costs
//! no ioctl; a `syscall` two (the frame, the segments).

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use kvm_bindings::{
    kvm_guest_debug, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{SyncReg, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::vm::GuestMemory;

pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
const VECTOR_PF: u64 = 14;
/// #PF error code: present, user mode, instruction fetch.
const PF_USER_FETCH: u64 = 0x15;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_AC: u64 = 1 << 18;
/// DR7: local enable of breakpoint 0, execute, length 1.
const DR7_L0: u64 = 1;

/// The frame the CPU pushed for a page fault, at the handler's RSP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultFrame {
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl FaultFrame {
    pub fn from_bytes(b: &[u8; 48]) -> FaultFrame {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        FaultFrame {
            error_code: w(0),
            rip: w(1),
            cs: w(2),
            rflags: w(3),
            rsp: w(4),
            ss: w(5),
        }
    }

    /// The fault a broken user-mode `syscall` produces.
    pub fn is_broken_syscall(&self, lstar: u64) -> bool {
        self.rip == lstar && self.cs & 3 == 3 && self.error_code == PF_USER_FETCH
    }
}

fn flat_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Whether a page fault with this CR2 can be the broken `syscall`, which
/// faults on fetching the instruction at LSTAR; only then is the fault
/// frame worth reading (an ioctl to translate its address).
pub fn may_be_broken_syscall(cr2: u64, lstar: u64) -> bool {
    cr2 == lstar
}

/// The state right after a SYSCALL from the fault frame: what the CPU would
/// have done had the switch to CPL0 happened. RCX, R11 and the masked
/// RFLAGS were already set by the broken instruction.
pub fn syscall_entry(
    frame: &FaultFrame,
    star: u64,
    lstar: u64,
    mut regs: kvm_regs,
    mut sregs: kvm_sregs,
) -> (kvm_regs, kvm_sregs) {
    let kernel_cs = ((star >> 32) & 0xfffc) as u16;
    regs.rip = lstar;
    regs.rsp = frame.rsp;
    regs.rflags = frame.rflags & !RFLAGS_RF;
    sregs.cs = flat_segment(kernel_cs, true);
    // SS = STAR[47:32] + 8, in 16 bits as the CPU computes it: the guest
    // chooses STAR, so 0xfffc is as possible as 0x10.
    sregs.ss = flat_segment(kernel_cs.wrapping_add(8), false);
    (regs, sregs)
}

/// A handler's first instruction, which Tsubame performs itself to get the
/// guest past the breakpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstInstruction {
    pub len: u64,
    /// RFLAGS bits the instruction clears (`clac`: AC, `cld`: DF).
    pub clears: u64,
}

impl FirstInstruction {
    /// Accepts only instructions whose whole effect is "clear a flag" or
    /// nothing at all.
    pub fn decode(bytes: &[u8]) -> Option<FirstInstruction> {
        let insn = Decoder::new(64, bytes, DecoderOptions::NONE).decode();
        let clears = match insn.mnemonic() {
            Mnemonic::Nop | Mnemonic::Endbr64 => 0,
            Mnemonic::Clac => RFLAGS_AC,
            Mnemonic::Cld => RFLAGS_DF,
            _ => return None,
        };
        Some(FirstInstruction {
            len: insn.len() as u64,
            clears,
        })
    }

    /// The registers after the instruction ran.
    pub fn step(&self, mut regs: kvm_regs) -> kvm_regs {
        regs.rip += self.len;
        regs.rflags &= !(self.clears | RFLAGS_RF);
        regs
    }
}

/// Reads the handler address of IDT vector `vector`.
fn idt_handler(fd: &VcpuFd, mem: &GuestMemory, sregs: &kvm_sregs, vector: u64) -> Option<u64> {
    if u64::from(sregs.idt.limit) < vector * 16 + 15 {
        return None;
    }
    let gate = read_virt::<16>(fd, mem, sregs.idt.base + vector * 16)?;
    let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    Some(lo | (mid << 16) | (hi << 32))
}

/// Reads N bytes at a guest virtual address (within one page or two).
pub(crate) fn read_virt<const N: usize>(
    fd: &VcpuFd,
    mem: &GuestMemory,
    gva: u64,
) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut done = 0;
    while done < N {
        // The guest's RSP (or any address it gave) may sit at the top of
        // the address space: no wrap to page 0, no overflow.
        let at = gva.checked_add(done as u64)?;
        let t = fd.translate_gva(at).ok()?;
        if t.valid == 0 {
            return None;
        }
        let n = ((0x1000 - (at & 0xfff)) as usize).min(N - done);
        mem.read_slice(&mut out[done..done + n], GuestAddress(t.physical_address))
            .ok()?;
        done += n;
    }
    Some(out)
}

fn read_msr(fd: &VcpuFd, index: u32) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    (fd.get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
}

/// What a breakpoint at the page-fault handler turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakpoint {
    /// A user `syscall`, now entering the kernel properly.
    Syscall,
    /// An ordinary page fault, let through.
    PageFault,
    /// Not our breakpoint.
    Foreign,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM ioctl: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("cannot read the page-fault frame at {0:#x}")]
    Frame(u64),
    #[error("the page-fault handler at {0:#x} no longer starts with an instruction Tsubame can step over")]
    Prologue(u64),
}

/// Per-vCPU repair state.
#[derive(Debug, Default)]
pub struct SyscallRepair {
    lstar: u64,
    star: u64,
    handler: Option<u64>,
    /// The guest physical address of the handler's first bytes, when
    /// they sit in one page.
    handler_gpa: Option<u64>,
    /// Registers travel in the kvm_run page (KVM_CAP_SYNC_REGS).
    sync_regs: bool,
}

/// What a snapshot keeps of the repair: the armed breakpoint (KVM does not
/// save guest-debug settings) and the values it needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepairState {
    pub lstar: u64,
    pub star: u64,
    /// The #PF handler the breakpoint sits on, when armed.
    pub handler: Option<u64>,
}

/// The first instruction's longest encoding.
const MAX_INSN: u64 = 15;

impl SyscallRepair {
    /// `sync_regs`: KVM can pass the registers in the kvm_run page.
    pub fn new(sync_regs: bool) -> SyscallRepair {
        SyscallRepair {
            sync_regs,
            ..SyscallRepair::default()
        }
    }

    /// Arms the hardware breakpoint on the handler (or, without one,
    /// clears it), with the registers passed at each exit while armed.
    fn arm(&mut self, fd: &mut VcpuFd, mem: &GuestMemory) -> Result<(), Error> {
        let mut dbg = kvm_guest_debug::default();
        self.handler_gpa = None;
        if let Some(handler) = self.handler {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[0] = handler;
            dbg.arch.debugreg[7] = DR7_L0;
            if handler & 0xfff <= 0x1000 - MAX_INSN {
                self.handler_gpa = fd
                    .translate_gva(handler)
                    .ok()
                    .filter(|t| {
                        t.valid != 0 && mem.address_in_range(GuestAddress(t.physical_address))
                    })
                    .map(|t| t.physical_address);
            }
        }
        fd.set_guest_debug(&dbg)?;
        if self.sync_regs {
            for reg in [SyncReg::Register, SyncReg::SystemRegister] {
                match self.handler {
                    Some(_) => fd.set_sync_valid_reg(reg),
                    None => fd.clear_sync_valid_reg(reg),
                }
            }
        }
        Ok(())
    }

    /// The registers at this exit.
    fn regs(&self, fd: &mut VcpuFd) -> Result<kvm_regs, Error> {
        match self.sync_regs {
            true => Ok(fd.sync_regs_mut().regs),
            false => Ok(fd.get_regs()?),
        }
    }

    /// The system registers at this exit.
    fn sregs(&self, fd: &mut VcpuFd) -> Result<kvm_sregs, Error> {
        match self.sync_regs {
            true => Ok(fd.sync_regs_mut().sregs),
            false => Ok(fd.get_sregs()?),
        }
    }

    /// The registers the guest goes on with.
    fn set_regs(&self, fd: &mut VcpuFd, regs: &kvm_regs) -> Result<(), Error> {
        if self.sync_regs {
            fd.sync_regs_mut().regs = *regs;
            fd.set_sync_dirty_reg(SyncReg::Register);
        } else {
            fd.set_regs(regs)?;
        }
        Ok(())
    }

    /// The handler's first bytes, as they are now (the kernel patches
    /// its entry code after the breakpoint is placed).
    fn handler_bytes(&self, fd: &VcpuFd, mem: &GuestMemory, pc: u64) -> Option<[u8; 15]> {
        let mut b = [0u8; MAX_INSN as usize];
        match self.handler_gpa {
            Some(gpa) => mem.read_slice(&mut b, GuestAddress(gpa)).ok().map(|()| b),
            None => read_virt::<15>(fd, mem, pc),
        }
    }

    /// The guest wrote LSTAR (the write exited through the MSR filter):
    /// perform it, then (re)arm the breakpoint on the page-fault handler.
    pub fn on_lstar_write(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemory,
        value: u64,
    ) -> Result<(), Error> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_LSTAR,
            data: value,
            ..Default::default()
        }])
        .map_err(|_| Error::Kvm(kvm_ioctls::Error::new(libc::ENOMEM)))?;
        fd.set_msrs(&msrs)?;
        self.lstar = value;
        self.star = read_msr(fd, MSR_STAR).unwrap_or(0);
        let sregs = fd.get_sregs()?;
        self.handler = idt_handler(fd, mem, &sregs, VECTOR_PF);
        let first = self
            .handler
            .and_then(|h| read_virt::<15>(fd, mem, h))
            .and_then(|b| FirstInstruction::decode(&b));
        match (self.handler, first) {
            (Some(handler), Some(_)) => {
                log::debug!("syscall repair armed: LSTAR {value:#x}, #PF handler {handler:#x}");
            }
            (Some(handler), None) => {
                log::warn!(
                    "syscall repair off: the #PF handler at {handler:#x} does not start with an instruction Tsubame can step over"
                );
                self.handler = None;
            }
            (None, _) => log::warn!("syscall repair off: no page-fault handler in the IDT"),
        }
        self.arm(fd, mem)
    }

    pub fn state(&self) -> RepairState {
        RepairState {
            lstar: self.lstar,
            star: self.star,
            handler: self.handler,
        }
    }

    /// Takes over a saved repair and re-arms its breakpoint.
    pub fn restore(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemory,
        s: RepairState,
    ) -> Result<(), Error> {
        self.lstar = s.lstar;
        self.star = s.star;
        self.handler = s.handler;
        self.arm(fd, mem)
    }

    /// KVM_EXIT_DEBUG at `pc`.
    pub fn on_breakpoint(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemory,
        pc: u64,
    ) -> Result<Breakpoint, Error> {
        if Some(pc) != self.handler {
            return Ok(Breakpoint::Foreign);
        }
        let regs = self.regs(fd)?;
        let sregs = self.sregs(fd)?;
        let frame = |fd: &VcpuFd| {
            read_virt::<48>(fd, mem, regs.rsp)
                .map(|b| FaultFrame::from_bytes(&b))
                .ok_or(Error::Frame(regs.rsp))
        };
        // The broken syscall faults on fetching LSTAR: a fault elsewhere
        // goes on without its frame being read.
        if may_be_broken_syscall(sregs.cr2, self.lstar) {
            let frame = frame(fd)?;
            if frame.is_broken_syscall(self.lstar) {
                let (regs, sregs) = syscall_entry(&frame, self.star, self.lstar, regs, sregs);
                // Segments before registers, as KVM takes them (the
                // registers go with the next entry).
                fd.set_sregs(&sregs)?;
                self.set_regs(fd, &regs)?;
                return Ok(Breakpoint::Syscall);
            }
        }
        if log::log_enabled!(log::Level::Trace) {
            if let Ok(f) = frame(fd) {
                log::trace!(
                    "page fault: rip {:#x} cs {:#x} error {:#x} cr2 {:#x}",
                    f.rip,
                    f.cs,
                    f.error_code,
                    sregs.cr2
                );
            }
        }
        let first = self
            .handler_bytes(fd, mem, pc)
            .and_then(|b| FirstInstruction::decode(&b))
            .ok_or(Error::Prologue(pc))?;
        self.set_regs(fd, &first.step(regs))?;
        Ok(Breakpoint::PageFault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's STAR: user CS base 0x23 - 16 in 63:48, kernel CS 0x10 in 47:32.
    const STAR: u64 = (0x23u64 << 48) | (0x10u64 << 32);
    const LSTAR: u64 = 0xffff_ffff_8200_0040;

    fn frame_bytes(f: &FaultFrame) -> [u8; 48] {
        let mut b = [0u8; 48];
        for (i, w) in [f.error_code, f.rip, f.cs, f.rflags, f.rsp, f.ss]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    fn broken() -> FaultFrame {
        FaultFrame {
            error_code: PF_USER_FETCH,
            rip: LSTAR,
            cs: 0x33,
            rflags: 0x202,
            rsp: 0x7fff_0000_1000,
            ss: 0x2b,
        }
    }

    #[test]
    fn handler_prologues_are_stepped_over() {
        // Linux 6.1 with SMAP off: `clac` becomes three one-byte nops, and
        // later (alternatives) one three-byte nop.
        let nop = FirstInstruction::decode(&[0x90, 0x90, 0x90, 0xfc]).unwrap();
        assert_eq!(nop, FirstInstruction { len: 1, clears: 0 });
        let nopl = FirstInstruction::decode(&[0x0f, 0x1f, 0x00, 0xfc]).unwrap();
        assert_eq!(nopl, FirstInstruction { len: 3, clears: 0 });
        let endbr = FirstInstruction::decode(&[0xf3, 0x0f, 0x1e, 0xfa]).unwrap();
        assert_eq!(endbr.len, 4);
        let clac = FirstInstruction::decode(&[0x0f, 0x01, 0xca]).unwrap();
        let regs = kvm_regs {
            rip: 0x1000,
            rflags: RFLAGS_AC | RFLAGS_RF | 0x202,
            ..Default::default()
        };
        let after = clac.step(regs);
        assert_eq!((after.rip, after.rflags), (0x1003, 0x202));
        assert_eq!(
            FirstInstruction::decode(&[0xfc]).unwrap().step(regs).rflags & RFLAGS_DF,
            0
        );
        // Anything with more effect is refused: the repair stays off.
        assert_eq!(FirstInstruction::decode(&[0x6a, 0xff]), None); // push -1
        assert_eq!(FirstInstruction::decode(&[0xe8, 0, 0, 0, 0]), None); // call
    }

    #[test]
    fn only_a_fault_at_lstar_has_its_frame_read() {
        assert!(may_be_broken_syscall(LSTAR, LSTAR));
        assert!(!may_be_broken_syscall(0x40_1000, LSTAR));
        assert!(!may_be_broken_syscall(LSTAR + 1, LSTAR));
    }

    #[test]
    fn frames_parse() {
        let f = broken();
        assert_eq!(FaultFrame::from_bytes(&frame_bytes(&f)), f);
    }

    #[test]
    fn only_user_fetch_faults_at_lstar_are_syscalls() {
        assert!(broken().is_broken_syscall(LSTAR));
        let kernel_mode = FaultFrame {
            cs: 0x10,
            ..broken()
        };
        assert!(!kernel_mode.is_broken_syscall(LSTAR));
        let data_fault = FaultFrame {
            error_code: 0x6,
            ..broken()
        };
        assert!(!data_fault.is_broken_syscall(LSTAR));
        let elsewhere = FaultFrame {
            rip: 0x40_1000,
            ..broken()
        };
        assert!(!elsewhere.is_broken_syscall(LSTAR));
    }

    #[test]
    fn the_transition_is_what_syscall_would_have_done() {
        // As the broken syscall left them: RCX = return address, R11 = RFLAGS.
        let regs = kvm_regs {
            rcx: 0x40_1234,
            r11: 0x246,
            rax: 39,
            rsp: 0xffff_c900_0000_3f58, // the #PF frame on the kernel stack
            rip: 0xffff_ffff_8100_0000, // the handler
            rflags: 0x2,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x10;
        let (r, s) = syscall_entry(&broken(), STAR, LSTAR, regs, sregs);
        assert_eq!(r.rip, LSTAR);
        assert_eq!(r.rsp, 0x7fff_0000_1000, "SYSCALL does not switch stacks");
        assert_eq!(r.rflags, 0x202);
        assert_eq!((r.rcx, r.r11, r.rax), (0x40_1234, 0x246, 39), "untouched");
        assert_eq!(
            (s.cs.selector, s.cs.dpl, s.cs.l, s.cs.type_),
            (0x10, 0, 1, 0xb)
        );
        assert_eq!(
            (s.ss.selector, s.ss.dpl, s.ss.db, s.ss.type_),
            (0x18, 0, 1, 0x3)
        );
    }

    #[test]
    fn a_guest_star_at_the_top_of_the_selector_space_wraps_as_the_cpu_does() {
        // STAR[47:32] = 0xfffc: SS = 0xfffc + 8 in 16 bits (an overflow
        // panic in a build with overflow checks before).
        let star = 0xfffc_u64 << 32;
        let (_, s) = syscall_entry(
            &broken(),
            star,
            LSTAR,
            kvm_regs::default(),
            kvm_sregs::default(),
        );
        assert_eq!((s.cs.selector, s.ss.selector), (0xfffc, 0x0004));
    }
}
