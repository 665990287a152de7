//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2): a register
//! window on the MMIO bus in front of a [`VirtioDevice`].
//!
//! Queue notifications never run device code on the vCPU thread: a write to
//! `QueueNotify` only signals the queue's eventfd (KVM does the same without
//! an exit when the eventfd is registered as an ioeventfd), and the device
//! thread does the work.

mod backend;
mod state;
#[cfg(test)]
mod tests;

pub use backend::{Backend, Interrupt};
pub use state::{SavedQueue, TransportState};

use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::{BusDevice, IrqLine};
use crate::vm::GuestMemory;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// Size of one device's window: registers, then configuration at 0x100.
pub const WINDOW_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// PCI-SIG has none for us; "TSBM".
pub const VENDOR_ID: u32 = 0x4d42_5354;

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION_REG: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const VENDOR_ID_REG: u64 = 0x00c;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
/// Where the driver writes a queue index to notify; the ioeventfd address.
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// `VIRTIO_RING_F_EVENT_IDX`.
pub const RING_EVENT_IDX: u64 = 1 << 29;

pub struct MmioTransport {
    /// The device thread's half; see `backend.rs` for what needs its lock.
    backend: Arc<Mutex<Backend>>,
    interrupt: Arc<Interrupt>,
    /// One per queue; the device thread waits on them.
    queue_events: Arc<[EventFd]>,
    // Fixed for the device's life: read without the backend's lock.
    name: &'static str,
    device_type: u32,
    device_features: u64,
    queue_max_sizes: Vec<u16>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// The device's counters as last read: the figures metrics report
    /// while the device thread holds the backend (a stalled disk).
    last_counters: Vec<(&'static str, u64)>,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: IrqLine,
    ) -> std::io::Result<MmioTransport> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for &max in device.queue_max_sizes() {
            // Sizes come from our own devices: powers of two, never zero.
            let q = Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            queues.push(q);
            queue_events.push(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        }
        let queue_events: Arc<[EventFd]> = queue_events.into();
        let interrupt = Arc::new(Interrupt::new(irq));
        let (name, device_type, device_features) =
            (device.name(), device.device_type(), device.features());
        let queue_max_sizes = device.queue_max_sizes().to_vec();
        let last_counters = device.counters();
        let backend = Backend::new(device, queues, mem, queue_events.clone(), interrupt.clone());
        Ok(MmioTransport {
            backend: Arc::new(Mutex::new(backend)),
            interrupt,
            queue_events,
            name,
            device_type,
            device_features,
            queue_max_sizes,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            last_counters,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The device's counters; the last ones read while the device thread
    /// is busy in the device, so that a stuck device stops no caller.
    pub fn counters(&mut self) -> Vec<(&'static str, u64)> {
        if let Ok(b) = self.backend.try_lock() {
            self.last_counters = b.device.counters();
        }
        self.last_counters.clone()
    }

    /// The queue eventfds, for ioeventfd registration and the device thread.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// What the device thread works on.
    pub fn backend(&self) -> Arc<Mutex<Backend>> {
        self.backend.clone()
    }

    fn lock_backend(&self) -> std::sync::MutexGuard<'_, Backend> {
        crate::devices::bus::lock(&self.backend)
    }

    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Applies `f` to the selected queue while the driver may still set
    /// it up (the layout is frozen once the driver is running).
    fn with_selected_queue(&self, f: impl FnOnce(&mut Queue)) {
        if self.status & STATUS_DRIVER_OK != 0 {
            return;
        }
        if let Some(q) = self.lock_backend().queues.get_mut(self.queue_sel as usize) {
            f(q);
        }
    }

    /// The six ring address registers: low halves at 8-aligned offsets,
    /// high halves 4 bytes above.
    fn set_queue_address(&self, offset: u64, v: u32) {
        let (low, high) = if offset & 4 == 0 {
            (Some(v), None)
        } else {
            (None, Some(v))
        };
        let name = self.name;
        self.with_selected_queue(|q| {
            let merge = |old: u64| {
                let low = low.map_or(old & 0xffff_ffff, u64::from);
                let high = high.map_or(old >> 32, u64::from);
                GuestAddress(high << 32 | low)
            };
            // virtio-queue's try_ setters: its plain ones log every
            // misaligned write, which a guest can repeat at will.
            let (what, ok) = match offset & !4 {
                QUEUE_DESC_LOW => (
                    "descriptor table",
                    q.try_set_desc_table_address(merge(q.desc_table())),
                ),
                QUEUE_DRIVER_LOW => (
                    "driver ring",
                    q.try_set_avail_ring_address(merge(q.avail_ring())),
                ),
                _ => (
                    "device ring",
                    q.try_set_used_ring_address(merge(q.used_ring())),
                ),
            };
            if let Err(e) = ok {
                crate::limited!(Warn, "{name}: {what} address refused: {e}");
            }
        });
    }

    fn device_features_word(&self) -> u32 {
        let f = self.device_features;
        match self.device_features_sel {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        }
    }

    fn reset(&mut self) {
        {
            let mut b = self.lock_backend();
            b.device.reset();
            for q in &mut b.queues {
                q.reset();
            }
            b.queues_set();
            b.active = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.set(0);
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device_features;
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                crate::limited!(
                    Warn,
                    "{}: driver features {:#x} refused (offered {:#x}, VERSION_1 required)",
                    self.name(),
                    self.driver_features,
                    offered
                );
                value &= !STATUS_FEATURES_OK;
            }
        }
        if newly & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 && value & STATUS_FEATURES_OK == 0 {
                value &= !STATUS_DRIVER_OK;
            } else if let Err(why) = self.activate() {
                crate::limited!(Warn, "{}: cannot start: {why}", self.name());
                value |= STATUS_NEEDS_RESET;
                self.status = value;
                self.interrupt.raise(INT_CONFIG, self.name);
                return;
            }
        }
        self.status = value;
    }

    fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.driver_features & RING_EVENT_IDX != 0;
        let mut b = self.lock_backend();
        let b = &mut *b;
        for (i, q) in b.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&b.mem) {
                return Err(format!(
                    "queue {i}: size {} or rings at {:#x}/{:#x}/{:#x} invalid",
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring()
                ));
            }
            q.set_event_idx(event_idx);
        }
        b.queues_set();
        b.device.activate(self.driver_features);
        b.active = true;
        // Host-side input may have arrived before the driver was ready (a
        // frame on a tap); the edge is gone, so wake the device thread.
        if b.device.io_source().is_some() {
            for e in self.queue_events.iter() {
                let _ = e.write(1);
            }
        }
        Ok(())
    }
}

fn set_half(word: &mut u64, high: bool, value: u32) {
    if high {
        *word = (*word & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *word = (*word & !0xffff_ffff) | u64::from(value);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.lock_backend()
                .device
                .read_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32-bit; anything else reads as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let sel = self.queue_sel as usize;
        let value = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device_type,
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => self.device_features_word(),
            QUEUE_NUM_MAX => self.queue_max_sizes.get(sel).map_or(0, |&m| m.into()),
            QUEUE_READY => self
                .lock_backend()
                .queues
                .get(sel)
                .map_or(0, |q| q.ready().into()),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.lock_backend()
                .device
                .write_config(offset - CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Features are fixed once FEATURES_OK is set.
            DRIVER_FEATURES
                if self.status & STATUS_FEATURES_OK == 0 && self.driver_features_sel < 2 =>
            {
                let high = self.driver_features_sel == 1;
                set_half(&mut self.driver_features, high, v);
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                let name = self.name;
                self.with_selected_queue(|q| {
                    let max = q.max_size();
                    let set = u16::try_from(v).map(|size| q.try_set_size(size));
                    if !matches!(set, Ok(Ok(()))) {
                        crate::limited!(
                            Warn,
                            "{name}: QueueNum {v} refused (a power of two up to {max})"
                        );
                    }
                });
            }
            QUEUE_READY => self.with_selected_queue(|q| q.set_ready(v == 1)),
            QUEUE_NOTIFY => {
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.acknowledge(v),
            STATUS => self.write_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.set_queue_address(offset, v),
            _ => {}
        }
    }
}
