//! The boot vCPU's registers at the kernel entry, for each entry protocol.
//! Computed on the main thread; the vCPU thread applies them to itself.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt;
use crate::vm::layout::{GDT_ADDR, IDT_ADDR};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64 { rip: u64, zero_page: u64, cr3: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh { rip: u64, start_info: u64 },
}

impl Entry {
    pub fn rip(&self) -> u64 {
        match *self {
            Entry::Linux64 { rip, .. } | Entry::Pvh { rip, .. } => rip,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Entry::Linux64 { .. } => "64-bit boot protocol",
            Entry::Pvh { .. } => "PVH",
        }
    }

    /// The GDT this entry needs in guest memory at [`GDT_ADDR`].
    pub fn gdt(&self) -> [u64; 5] {
        match self {
            Entry::Linux64 { .. } => gdt::long_mode(),
            Entry::Pvh { .. } => gdt::protected_mode(),
        }
    }
}

/// Everything the boot vCPU loads before its first KVM_RUN.
#[derive(Clone, Debug)]
pub struct BootRegs {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
}

impl BootRegs {
    /// Registers for `entry`, starting from the vCPU's reset `sregs` (which
    /// carry KVM's defaults for the fields we leave alone, such as the APIC
    /// base).
    pub fn new(entry: Entry, mut sregs: kvm_sregs) -> BootRegs {
        let gdt = entry.gdt();
        let code = gdt::segment(&gdt, gdt::CODE_SELECTOR / 8);
        let data = gdt::segment(&gdt, gdt::DATA_SELECTOR / 8);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = gdt::segment(&gdt, gdt::TSS_SELECTOR / 8);
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
        sregs.idt.base = IDT_ADDR;
        sregs.idt.limit = 7;

        let mut regs = kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.rip(),
            ..Default::default()
        };
        match entry {
            Entry::Linux64 { zero_page, cr3, .. } => {
                sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
                sregs.cr3 = cr3;
                sregs.cr4 = CR4_PAE;
                sregs.efer = EFER_LME | EFER_LMA;
                regs.rsi = zero_page;
            }
            Entry::Pvh { start_info, .. } => {
                sregs.cr0 = CR0_PE | CR0_ET | CR0_NE;
                sregs.cr3 = 0;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rbx = start_info;
            }
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        BootRegs { regs, sregs, fpu }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_enters_long_mode_with_rsi_at_the_zero_page() {
        let b = BootRegs::new(
            Entry::Linux64 {
                rip: 0x100_0000,
                zero_page: 0x7000,
                cr3: 0x9000,
            },
            kvm_sregs::default(),
        );
        assert_eq!(b.regs.rip, 0x100_0000);
        assert_eq!(b.regs.rsi, 0x7000);
        assert_eq!(b.sregs.cr3, 0x9000);
        assert_ne!(b.sregs.cr0 & CR0_PG, 0);
        assert_ne!(b.sregs.cr4 & CR4_PAE, 0);
        assert_eq!(b.sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(b.sregs.cs.l, 1);
        assert_eq!(b.sregs.cs.selector, gdt::CODE_SELECTOR);
        assert_eq!(b.sregs.ss.selector, gdt::DATA_SELECTOR);
        assert_eq!(b.fpu.mxcsr, 0x1f80);
    }

    #[test]
    fn pvh_enters_flat_protected_mode_with_ebx_at_start_info() {
        let b = BootRegs::new(
            Entry::Pvh {
                rip: 0x100_0400,
                start_info: 0x6000,
            },
            kvm_sregs::default(),
        );
        assert_eq!(b.regs.rbx, 0x6000);
        assert_eq!(b.sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(b.sregs.efer, 0);
        assert_eq!((b.sregs.cs.l, b.sregs.cs.db), (0, 1));
        assert_eq!(b.sregs.cs.limit, 0xffff_ffff);
    }
}
