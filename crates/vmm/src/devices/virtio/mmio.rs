//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2): a register
//! window on the MMIO bus in front of a [`VirtioDevice`].
//!
//! Queue notifications never run device code on the vCPU thread: a write to
//! `QueueNotify` only signals the queue's eventfd (KVM does the same without
//! an exit when the eventfd is registered as an ioeventfd), and the device
//! thread does the work.

mod state;

pub use state::{SavedQueue, TransportState};

use super::{Used, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::{BusDevice, IrqLine};
use crate::vm::GuestMemory;
use virtio_queue::{Queue, QueueT};
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
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    /// One per queue; the device thread waits on them.
    queue_events: Vec<EventFd>,
    irq: IrqLine,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
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
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_events,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
        })
    }

    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.device.counters()
    }

    /// The queue eventfds, for ioeventfd registration and the device thread.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Device thread: the driver notified queue `index`.
    pub fn process_queue(&mut self, index: usize) {
        if !self.is_active() {
            return;
        }
        if !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        let used = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.interrupt_for(used);
    }

    /// The device's host-side source (`VirtioDevice::io_source`).
    pub fn io_source(&self) -> Option<std::os::fd::RawFd> {
        self.device.io_source()
    }

    /// Device thread: the device's host-side source is ready.
    pub fn process_io(&mut self) {
        if !self.is_active() {
            return;
        }
        let used = self.device.process_io(&mut self.queues, &self.mem);
        self.interrupt_for(used);
    }

    /// One interrupt for the queues that got used buffers, unless with
    /// EVENT_IDX the driver asked not to be told yet; queues the device
    /// left at its budget are woken again.
    fn interrupt_for(&mut self, used: Used) {
        for (i, e) in self.queue_events.iter().enumerate() {
            if used.needs_again(i) {
                let _ = e.write(1);
            }
        }
        let mem = &self.mem;
        let notify = self.queues.iter_mut().enumerate().any(|(i, q)| {
            used.contains(i) && q.ready() && q.needs_notification(mem).unwrap_or(true)
        });
        if notify {
            self.signal(INT_USED_RING);
        }
    }

    fn signal(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Err(e) = self.irq.0.write(1) {
            log::warn!("{}: cannot raise interrupt: {e}", self.name());
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue layout is frozen once the driver is running.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The six ring address registers: low halves at 8-aligned offsets,
    /// high halves 4 bytes above.
    fn set_queue_address(&mut self, offset: u64, v: u32) {
        let (low, high) = if offset & 4 == 0 {
            (Some(v), None)
        } else {
            (None, Some(v))
        };
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset & !4 {
            QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
            QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
            _ => q.set_used_ring_address(low, high),
        }
    }

    fn device_features_word(&self) -> u32 {
        let f = self.device.features();
        match self.device_features_sel {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::warn!(
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
                log::warn!("{}: cannot start: {why}", self.name());
                value |= STATUS_NEEDS_RESET;
                self.status = value;
                self.signal(INT_CONFIG);
                return;
            }
        }
        self.status = value;
    }

    fn activate(&mut self) -> Result<(), String> {
        let event_idx = self.driver_features & RING_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
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
        self.device.activate(self.driver_features);
        // Host-side input may have arrived before the driver was ready (a
        // frame on a tap); the edge is gone, so wake the device thread.
        if self.device.io_source().is_some() {
            for e in &self.queue_events {
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
            self.device.read_config(offset - CONFIG, data);
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
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => self.device_features_word(),
            QUEUE_NUM_MAX => self.queues.get(sel).map_or(0, |q| q.max_size().into()),
            QUEUE_READY => self.queues.get(sel).map_or(0, |q| q.ready().into()),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
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
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(v)) {
                    q.set_size(size);
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => self.write_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.set_queue_address(offset, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;

    /// A device that counts what the transport asks of it.
    #[derive(Default)]
    struct Probe {
        processed: Arc<Mutex<Vec<usize>>>,
        activated: Arc<Mutex<Option<u64>>>,
    }

    impl VirtioDevice for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn device_type(&self) -> u32 {
            super::super::TYPE_RNG
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | RING_EVENT_IDX | 0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0x11, 0x22, 0x33], offset, data);
        }
        fn activate(&mut self, features: u64) {
            *self.activated.lock().unwrap() = Some(features);
        }
        fn save(&mut self) -> Result<crate::devices::virtio::DeviceState, String> {
            Ok(crate::devices::virtio::DeviceState::Rng)
        }
        fn restore(&mut self, _s: &crate::devices::virtio::DeviceState) -> Result<(), String> {
            Ok(())
        }
        fn process_queue(&mut self, index: usize, _q: &mut [Queue], _m: &GuestMemory) -> Used {
            self.processed.lock().unwrap().push(index);
            Used::queue(index)
        }
    }

    type Log<T> = Arc<Mutex<T>>;

    fn transport() -> (MmioTransport, Log<Vec<usize>>, Log<Option<u64>>) {
        let probe = Probe::default();
        let (p, a) = (probe.processed.clone(), probe.activated.clone());
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let t = MmioTransport::new(Box::new(probe), mem, IrqLine::new().unwrap()).unwrap();
        (t, p, a)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Walks the driver's side of initialisation (virtio 1.2, 3.1.1).
    fn bring_up(t: &mut MmioTransport, features: u64) -> u32 {
        w(t, STATUS, STATUS_ACKNOWLEDGE);
        w(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, DRIVER_FEATURES_SEL, 0);
        w(t, DRIVER_FEATURES, features as u32);
        w(t, DRIVER_FEATURES_SEL, 1);
        w(t, DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        let s = r(t, STATUS);
        if s & STATUS_FEATURES_OK == 0 {
            return s;
        }
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(t, QUEUE_SEL, q);
            w(t, QUEUE_NUM, 8);
            w(t, QUEUE_DESC_LOW, base);
            w(t, QUEUE_DESC_HIGH, 0);
            w(t, QUEUE_DRIVER_LOW, base + 0x800);
            w(t, QUEUE_DEVICE_LOW, base + 0x1000);
            w(t, QUEUE_READY, 1);
        }
        w(t, STATUS, s | STATUS_DRIVER_OK);
        r(t, STATUS)
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VERSION_REG), 2);
        assert_eq!(r(&mut t, DEVICE_ID), super::super::TYPE_RNG);
        assert_eq!(r(&mut t, VENDOR_ID_REG), VENDOR_ID);
        w(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, DEVICE_FEATURES), (1 << 29) | 0b101);
        w(&mut t, DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 0);
        w(&mut t, QUEUE_SEL, 1);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 8);
        w(&mut t, QUEUE_SEL, 2);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 0, "no such queue");
        let mut cfg = [0u8; 4];
        t.read(CONFIG + 1, &mut cfg);
        assert_eq!(cfg, [0x22, 0x33, 0, 0]);
    }

    #[test]
    fn odd_sized_or_unaligned_register_accesses_are_ignored() {
        let (mut t, _, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(STATUS, &[1, 0]);
        t.write(STATUS + 1, &1u32.to_le_bytes());
        assert_eq!(r(&mut t, STATUS), 0);
    }

    #[test]
    fn full_bring_up_activates_and_notifies_through_the_eventfd() {
        let (mut t, processed, activated) = transport();
        // Without EVENT_IDX every used buffer interrupts.
        let features = VIRTIO_F_VERSION_1 | 0b100;
        let s = bring_up(&mut t, features);
        assert_eq!(s & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        assert!(t.is_active());
        assert_eq!(*activated.lock().unwrap(), Some(features));
        // A notify from the vCPU only signals the eventfd...
        w(&mut t, QUEUE_NOTIFY, 1);
        assert!(processed.lock().unwrap().is_empty());
        assert_eq!(t.queue_events()[1].read().unwrap(), 1);
        // ...and the device thread's processing raises the interrupt.
        t.process_queue(1);
        assert_eq!(*processed.lock().unwrap(), vec![1]);
        assert_eq!(r(&mut t, INTERRUPT_STATUS) & INT_USED_RING, INT_USED_RING);
        w(&mut t, INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
        // Out-of-range notifies and queues are ignored.
        w(&mut t, QUEUE_NOTIFY, 9);
        t.process_queue(9);
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let (mut t, _, activated) = transport();
        let s = bring_up(&mut t, 0b1);
        assert_eq!(s & STATUS_FEATURES_OK, 0, "legacy driver refused");
        let (mut t, _, _) = transport();
        let s = bring_up(&mut t, VIRTIO_F_VERSION_1 | (1 << 40));
        assert_eq!(s & STATUS_FEATURES_OK, 0, "unoffered feature refused");
        assert!(activated.lock().unwrap().is_none());
    }

    #[test]
    fn bad_queue_addresses_need_reset_instead_of_activation() {
        let (mut t, processed, activated) = transport();
        w(&mut t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1);
        w(
            &mut t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, QUEUE_NUM, 8);
        w(&mut t, QUEUE_DESC_LOW, 0xffff_f000); // outside guest memory
        w(&mut t, QUEUE_DRIVER_LOW, 0x2000);
        w(&mut t, QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t, QUEUE_READY, 1);
        w(&mut t, STATUS, 0xf);
        let s = r(&mut t, STATUS);
        assert_eq!(s & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        assert!(!t.is_active());
        assert!(activated.lock().unwrap().is_none());
        t.process_queue(0);
        assert!(processed.lock().unwrap().is_empty());
        // Writing 0 resets everything.
        w(&mut t, STATUS, 0);
        assert_eq!(r(&mut t, STATUS), 0);
        assert_eq!(r(&mut t, QUEUE_READY), 0);
    }

    #[test]
    fn queue_layout_is_frozen_once_running() {
        let (mut t, _, _) = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, QUEUE_SEL, 0);
        w(&mut t, QUEUE_READY, 0);
        assert_eq!(r(&mut t, QUEUE_READY), 1);
    }
}
