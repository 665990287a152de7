//! Every device of a machine, typed: the buses the vCPUs dispatch to, the
//! legacy devices the VMM talks to itself (the console, the keyboard
//! controller), the virtio transports and their thread. Pause, resume and
//! the counters go through here, and so do saving and restoring device
//! state (each device saves its own `*State`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::legacy::{SerialConsole, I8042};
use super::virtio::mmio::MmioTransport;
use super::virtio::worker::DeviceThread;
use super::{bus, Bus};
use crate::irqchip::{ioapic::IoApic, UserChip};
use crate::persist::DevicesState;

/// Tsubame's own interrupt controllers, where KVM lacks them: the PIC
/// pair and PIT (`split`, `userspace`) and the IOAPIC (`split`).
#[derive(Clone, Default)]
pub struct OwnChips {
    pub chip: Option<Arc<UserChip>>,
    pub ioapic: Option<Arc<IoApic>>,
}

pub fn save_devices(
    com1: &Mutex<SerialConsole>,
    i8042: &Mutex<I8042>,
    virtio: &[Arc<Mutex<MmioTransport>>],
    chips: &OwnChips,
) -> Result<DevicesState, String> {
    Ok(DevicesState {
        serial: bus::lock(com1).state(),
        i8042: bus::lock(i8042).state(),
        virtio: virtio
            .iter()
            .map(|t| bus::lock(t).save())
            .collect::<Result<_, _>>()?,
        chip: chips.chip.as_ref().map(|c| c.save()),
        ioapic: chips.ioapic.as_ref().map(|io| io.save()),
    })
}

/// Puts saved state into freshly created devices (device thread paused):
/// the IOAPIC's routes first, then the PIC and PIT (whose next tick may
/// go through the IOAPIC), then the devices.
pub fn restore_devices(
    com1: &Mutex<SerialConsole>,
    i8042: &Mutex<I8042>,
    virtio: &[Arc<Mutex<MmioTransport>>],
    chips: &OwnChips,
    s: &DevicesState,
) -> Result<(), String> {
    match (&chips.ioapic, &s.ioapic) {
        (Some(io), Some(saved)) => io.restore(saved)?,
        (None, None) => {}
        _ => return Err(mismatch("IOAPIC")),
    }
    match (&chips.chip, &s.chip) {
        (Some(c), Some(saved)) => c.restore(saved)?,
        (None, None) => {}
        _ => return Err(mismatch("PIC and PIT")),
    }
    bus::lock(com1).restore(&s.serial)?;
    bus::lock(i8042).restore(&s.i8042)?;
    if s.virtio.len() != virtio.len() {
        return Err(format!(
            "{} virtio devices saved, {} configured",
            s.virtio.len(),
            virtio.len()
        ));
    }
    for (t, saved) in virtio.iter().zip(&s.virtio) {
        bus::lock(t).restore(saved)?;
    }
    Ok(())
}

/// (The restore's plan has checked the mode against the state already.)
fn mismatch(what: &str) -> String {
    format!("the snapshot's state for Tsubame's {what} does not fit this machine's irqchip mode")
}

/// A device's counters: its name (`virtio-blk0`) and (name, count) pairs.
pub type DeviceCounters = (String, Vec<(&'static str, u64)>);

pub struct DeviceManager {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub com1: Arc<Mutex<SerialConsole>>,
    /// COM1 again, when its console is on stdio (the main loop feeds it
    /// input).
    pub serial: Option<Arc<Mutex<SerialConsole>>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio devices, in attach order.
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// Runs the virtio queues; `None` without virtio devices.
    pub thread: Option<DeviceThread>,
    pub chips: OwnChips,
}

impl DeviceManager {
    /// The device thread stops taking requests.
    pub fn pause(&self, timeout: Duration) -> Result<(), String> {
        match &self.thread {
            Some(t) => t.pause(timeout),
            None => Ok(()),
        }
    }

    /// The device thread runs every queue once and takes requests again.
    pub fn resume(&self, timeout: Duration) -> Result<(), String> {
        match &self.thread {
            Some(t) => t.resume(timeout),
            None => Ok(()),
        }
    }

    /// Every device's state, with the device thread paused (vCPUs too).
    pub fn save(&self) -> Result<DevicesState, String> {
        save_devices(&self.com1, &self.i8042, &self.virtio, &self.chips)
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) {
        bus::lock(&self.i8042).trigger_ctrl_alt_del();
    }

    /// Each virtio device's counters, named `<type><n>` (virtio-blk0, …).
    pub fn counters(&self) -> Vec<DeviceCounters> {
        let mut seen: Vec<&'static str> = Vec::new();
        self.virtio
            .iter()
            .map(|t| {
                let mut t = bus::lock(t);
                let n = seen.iter().filter(|s| **s == t.name()).count();
                seen.push(t.name());
                (format!("{}{n}", t.name()), t.counters())
            })
            .collect()
    }

    /// Stops the device thread (after the vCPUs: nothing notifies then).
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}
