//! The device model: buses and the devices on them. Nothing here touches
//! KVM; interrupts leave a device through an [`IrqLine`] (an eventfd that
//! the VM wires to a GSI with irqfd).

pub mod bus;
pub mod legacy;
pub mod manager;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceIndex, SharedDevice};
pub use manager::DeviceManager;

use vmm_sys_util::eventfd::EventFd;

/// The port-I/O bus and the MMIO bus share one implementation.
pub type PioBus = Bus;
pub type MmioBus = Bus;

/// An edge-triggered interrupt line out of a device.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl IrqLine {
    pub fn new() -> std::io::Result<IrqLine> {
        Ok(IrqLine(EventFd::new(
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )?))
    }

    pub fn try_clone(&self) -> std::io::Result<IrqLine> {
        Ok(IrqLine(self.0.try_clone()?))
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
