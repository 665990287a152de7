//! The VM's own KVM state: the clock, and the in-kernel PIC pair, IOAPIC
//! and PIT when KVM has them (`--irqchip kernel`; in `split` those chips
//! are Tsubame's and save themselves, [`crate::irqchip::state`]).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::vcpu::Error;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub chips: Option<KernelChips>,
    pub clock: kvm_clock_data,
}

/// KVM's own PIC pair, IOAPIC and PIT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelChips {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
}

fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, Error> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

/// `kernel_chips`: KVM has the PIC, IOAPIC and PIT (`--irqchip kernel`).
pub fn save(vm: &VmFd, kernel_chips: bool) -> Result<VmState, Error> {
    let chips = if kernel_chips {
        Some(KernelChips {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        })
    } else {
        None
    };
    Ok(VmState {
        chips,
        clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
    })
}

/// Restores KVM's chips if saved (each checked to be the chip it claims
/// to be) and its PIT, then the clock. The clock goes back without flags: not
/// `KVM_CLOCK_TSC_STABLE` (the host TSC it was stable against is another
/// one now) and not `KVM_CLOCK_REALTIME` (which would advance the guest's
/// clock by the time it slept). The guest's monotonic time so continues
/// from the instant of the snapshot; its wall clock is behind by the time
/// the snapshot slept, until the guest (NTP, a host agent) corrects it.
///
/// With `realtime` (Firecracker's `clock_realtime`), the clock goes back
/// with `KVM_CLOCK_REALTIME` instead, and KVM advances it by the host
/// time that passed since the snapshot.
pub fn restore(vm: &VmFd, s: &VmState, realtime: bool) -> Result<(), Error> {
    if let Some(k) = &s.chips {
        for (c, id) in [
            (&k.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&k.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&k.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            let mut c = *c;
            c.chip_id = id;
            vm.set_irqchip(&c).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&k.pit).map_err(kvm("KVM_SET_PIT2"))?;
    }
    let mut clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    if realtime && s.clock.flags & KVM_CLOCK_REALTIME != 0 {
        clock.flags = KVM_CLOCK_REALTIME;
        clock.realtime = s.clock.realtime;
    }
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}
