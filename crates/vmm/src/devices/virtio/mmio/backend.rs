//! The half of a virtio-mmio device that the device thread works on: the
//! device, its queues and guest memory, behind a lock of their own. vCPUs
//! take that lock only to set up queues, touch configuration space, and
//! start or reset the device. What they touch on every interrupt and
//! notify (interrupt status and acknowledge, device status, QueueNotify)
//! stays in the transport, so a device stuck in I/O (an `fdatasync` on a
//! stalled file system) never stops a vCPU.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::INT_USED_RING;
use crate::devices::virtio::ram::HostRam;
use crate::devices::virtio::ring::needs_notification;
use crate::devices::virtio::{Used, VirtioDevice};
use crate::devices::IrqLine;
use crate::vm::GuestMemory;

/// The device's interrupt: the InterruptStatus bits and the line that
/// tells the guest to look at them. Shared by both halves.
pub struct Interrupt {
    status: AtomicU32,
    line: IrqLine,
}

impl Interrupt {
    pub fn new(line: IrqLine) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Sets `bits` and raises the line.
    pub fn raise(&self, bits: u32, device: &str) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.pulse(device);
    }

    /// Raises the line again for bits already set.
    pub fn pulse(&self, device: &str) {
        if let Err(e) = self.line.trigger() {
            log::warn!("{device}: cannot raise interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver's InterruptACK.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Reset (0) or restore.
    pub fn set(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

pub struct Backend {
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) queues: Vec<Queue>,
    pub(super) mem: GuestMemory,
    /// DRIVER_OK set and the device activated (cleared by a reset).
    pub(super) active: bool,
    /// Each queue's used index when the transport last decided whether to
    /// interrupt: the driver's EVENT_IDX is checked against the entries
    /// added since.
    checked_used: Vec<u16>,
    queue_events: Arc<[EventFd]>,
    interrupt: Arc<Interrupt>,
}

impl Backend {
    pub(super) fn new(
        device: Box<dyn VirtioDevice>,
        queues: Vec<Queue>,
        mem: GuestMemory,
        queue_events: Arc<[EventFd]>,
        interrupt: Arc<Interrupt>,
    ) -> Backend {
        Backend {
            device,
            checked_used: queues.iter().map(|q| q.next_used()).collect(),
            queues,
            mem,
            active: false,
            queue_events,
            interrupt,
        }
    }

    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The device's host-side source (`VirtioDevice::io_source`).
    pub fn io_source(&self) -> Option<std::os::fd::RawFd> {
        self.device.io_source()
    }

    /// Device thread: the driver notified queue `index`.
    pub fn process_queue(&mut self, index: usize) {
        if !self.active || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        let used = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.interrupt_for(used);
    }

    /// Device thread: the device's host-side source is ready.
    pub fn process_io(&mut self) {
        if !self.active {
            return;
        }
        let used = self.device.process_io(&mut self.queues, &self.mem);
        self.interrupt_for(used);
    }

    /// The queues' used indices were set (activation, reset, restore):
    /// later interrupts count from there.
    pub(super) fn queues_set(&mut self) {
        self.checked_used = self.queues.iter().map(|q| q.next_used()).collect();
    }

    /// One interrupt for the queues that got used buffers, unless with
    /// EVENT_IDX the driver asked not to be told yet; queues the device
    /// left at its budget are woken again.
    pub(super) fn interrupt_for(&mut self, used: Used) {
        for (i, e) in self.queue_events.iter().enumerate() {
            if used.needs_again(i) {
                let _ = e.write(1);
            }
        }
        let ram = HostRam::new(&self.mem);
        let mut notify = false;
        for (i, (q, since)) in self.queues.iter().zip(&mut self.checked_used).enumerate() {
            if used.contains(i) && q.ready() {
                notify |= needs_notification(q, &ram, *since);
                *since = q.next_used();
            }
        }
        if notify {
            self.interrupt.raise(INT_USED_RING, self.device.name());
        }
    }
}
