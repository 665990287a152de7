use super::*;
use crate::devices::virtio::Used;
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
    t.backend().lock().unwrap().process_queue(1);
    assert_eq!(*processed.lock().unwrap(), vec![1]);
    assert_eq!(r(&mut t, INTERRUPT_STATUS) & INT_USED_RING, INT_USED_RING);
    w(&mut t, INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
    // Out-of-range notifies and queues are ignored.
    w(&mut t, QUEUE_NOTIFY, 9);
    t.backend().lock().unwrap().process_queue(9);
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
    t.backend().lock().unwrap().process_queue(0);
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

/// With EVENT_IDX the driver's `used_event` decides: one interrupt when
/// the used index passes it, none for the entries before or after.
#[test]
fn event_idx_interrupts_once_the_used_index_passes_used_event() {
    use crate::devices::virtio::{
        ram::HostRam,
        ring::{push_used, Rings},
    };
    use vm_memory::Bytes;
    let (mut t, _, _) = transport();
    let s = bring_up(&mut t, VIRTIO_F_VERSION_1 | RING_EVENT_IDX);
    assert_eq!(s & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    // Queue 0: 8 entries, the driver's area at 0x1800; used_event follows
    // its ring.
    let used_event = GuestAddress(0x1800 + 4 + 2 * 8);
    let used_then_interrupted = |t: &mut MmioTransport, n: usize| {
        let backend = t.backend();
        let mut guard = backend.lock().unwrap();
        let b = &mut *guard;
        let ram = HostRam::new(&b.mem);
        let rings = Rings::new(&b.queues[0], &ram);
        for _ in 0..n {
            assert!(push_used(&mut b.queues[0], &ram, &rings, 0, 0));
        }
        drop(ram);
        b.interrupt_for(Used::queue(0));
        drop(guard);
        let raised = r(t, INTERRUPT_STATUS) & INT_USED_RING != 0;
        w(t, INTERRUPT_ACK, INT_USED_RING);
        raised
    };
    t.backend()
        .lock()
        .unwrap()
        .mem
        .write_obj(2u16, used_event)
        .unwrap();
    assert!(!used_then_interrupted(&mut t, 1), "used 0: not yet");
    assert!(!used_then_interrupted(&mut t, 1), "used 1: not yet");
    assert!(used_then_interrupted(&mut t, 1), "used 2: asked for");
    assert!(!used_then_interrupted(&mut t, 2), "used 3, 4: already told");
    t.backend()
        .lock()
        .unwrap()
        .mem
        .write_obj(4u16, used_event)
        .unwrap();
    assert!(
        !used_then_interrupted(&mut t, 1),
        "used 5: 4 was passed before"
    );
    t.backend()
        .lock()
        .unwrap()
        .mem
        .write_obj(7u16, used_event)
        .unwrap();
    assert!(used_then_interrupted(&mut t, 3), "used 6, 7, 8: passes 7");
}
