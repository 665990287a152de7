//! The device model: buses and the devices on them. Nothing here touches
//! KVM; interrupts leave a device through an [`IrqLine`] (an irqfd, or an
//! input of Tsubame's own PIC: the device cannot tell).

pub mod bus;
pub mod legacy;
pub mod manager;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceIndex, SharedDevice};
pub use manager::DeviceManager;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// The port-I/O bus and the MMIO bus share one implementation.
pub type PioBus = Bus;
pub type MmioBus = Bus;

/// Where a line ends when the interrupt controller is not KVM's (the
/// user-space PIC): it takes an edge on input `pin`.
pub trait InterruptSink: Send + Sync {
    fn pulse(&self, pin: u32);
}

/// An edge-triggered interrupt line out of a device. The device only
/// triggers it; the irqchip mode chose what is behind it.
pub enum IrqLine {
    /// An eventfd wired to a GSI of KVM's irqchip (irqfd).
    Irqfd(EventFd),
    /// An input of Tsubame's own interrupt controller.
    Sink(Arc<dyn InterruptSink>, u32),
}

impl std::fmt::Debug for IrqLine {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            IrqLine::Irqfd(e) => write!(f, "IrqLine::Irqfd({})", e.as_raw_fd()),
            IrqLine::Sink(_, pin) => write!(f, "IrqLine::Sink(pin {pin})"),
        }
    }
}

impl IrqLine {
    /// A line for an irqfd (wired by the caller).
    pub fn new() -> std::io::Result<IrqLine> {
        Ok(IrqLine::Irqfd(EventFd::new(
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )?))
    }

    pub fn try_clone(&self) -> std::io::Result<IrqLine> {
        Ok(match self {
            IrqLine::Irqfd(e) => IrqLine::Irqfd(e.try_clone()?),
            IrqLine::Sink(s, pin) => IrqLine::Sink(s.clone(), *pin),
        })
    }

    /// Sends one edge.
    pub fn trigger(&self) -> std::io::Result<()> {
        match self {
            IrqLine::Irqfd(e) => e.write(1),
            IrqLine::Sink(s, pin) => {
                s.pulse(*pin);
                Ok(())
            }
        }
    }

    /// The eventfd behind an irqfd line (tests read it).
    pub fn eventfd(&self) -> Option<&EventFd> {
        match self {
            IrqLine::Irqfd(e) => Some(e),
            IrqLine::Sink(..) => None,
        }
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
