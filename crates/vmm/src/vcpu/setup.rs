//! A vCPU's configuration before its first KVM_RUN: CPUID, MSRs, the
//! LAPIC's LINT0/LINT1 (before the start gate, while the rest of the
//! machine is set up), and at the gate (boot vCPU only) the entry
//! registers. APs stay in the in-kernel LAPIC's wait-for-SIPI state.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::{CpuPlan, Error};
use crate::boot::{cpuid, msrs, BootRegs, Entry};

/// LVT entries in the LAPIC register page and the delivery modes we set.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b: Vec<u8> = l.regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 takes the PIC's ExtINT, LINT1 NMIs, as on a PC.
fn configure_lapic(fd: &VcpuFd) -> Result<(), Error> {
    let mut lapic = fd.get_lapic().map_err(Error::Lapic)?;
    let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT0,
        set_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT1,
        set_delivery_mode(lint1, APIC_MODE_NMI),
    );
    fd.set_lapic(&lapic).map_err(Error::Lapic)?;
    Ok(())
}

/// CPUID, MSRs and LAPIC: all a booting vCPU needs but its entry point.
pub fn configure_cpu(fd: &VcpuFd, id: u8, plan: &CpuPlan) -> Result<(), Error> {
    let cpuid = cpuid::shape(
        &plan.supported_cpuid,
        u32::from(id),
        u32::from(plan.vcpu_count),
        plan.cpu_profile,
    );
    fd.set_cpuid2(&cpuid).map_err(Error::Cpuid)?;

    let boot_msrs = msrs::boot_msrs_fam().map_err(Error::MsrList)?;
    let written = fd.set_msrs(&boot_msrs).map_err(Error::Msrs)?;
    if let Some(refused) = boot_msrs.as_slice().get(written) {
        return Err(Error::MsrRefused(refused.index));
    }

    if plan.cpu_profile.apic {
        configure_lapic(fd)?;
    }
    Ok(())
}

/// The boot vCPU's entry registers (the kernel is loaded by now).
pub fn set_entry(fd: &VcpuFd, id: u8, entry: Entry) -> Result<(), Error> {
    if id == 0 {
        let sregs = fd.get_sregs().map_err(Error::Registers)?;
        let boot = BootRegs::new(entry, sregs);
        fd.set_sregs(&boot.sregs).map_err(Error::Registers)?;
        fd.set_regs(&boot.regs).map_err(Error::Registers)?;
        fd.set_fpu(&boot.fpu).map_err(Error::Registers)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
    }

    #[test]
    fn lapic_registers_round_trip() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT_LINT1, 0xdead_beef);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT1), 0xdead_beef);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT0), 0);
    }
}
