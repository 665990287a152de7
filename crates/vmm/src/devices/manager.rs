//! Every device of a machine, typed: the buses the vCPUs dispatch to, the
//! legacy devices the VMM talks to itself (the console, the keyboard
//! controller), the virtio transports and their thread. Pause, resume and
//! the counters go through here; saving and restoring device state will
//! too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::legacy::{SerialConsole, I8042};
use super::virtio::mmio::MmioTransport;
use super::virtio::worker::DeviceThread;
use super::{bus, Bus};

/// A device's counters: its name (`virtio-blk0`) and (name, count) pairs.
pub type DeviceCounters = (String, Vec<(&'static str, u64)>);

pub struct DeviceManager {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// COM1, when its console is on stdio (the main loop feeds it input).
    pub serial: Option<Arc<Mutex<SerialConsole>>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio devices, in attach order.
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// Runs the virtio queues; `None` without virtio devices.
    pub thread: Option<DeviceThread>,
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
                let t = bus::lock(t);
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
