//! Test helpers: descriptor chains on virtio-queue's mock driver.

use crate::vm::GuestMemory;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// Guest memory that lives for the test binary, so mock queues can borrow it.
pub fn leaked_memory(size: usize) -> &'static GuestMemory {
    Box::leak(Box::new(
        GuestMemory::from_ranges(&[(GuestAddress(0), size)]).unwrap(),
    ))
}

/// Makes descriptors (address, length, device-writable), chained from
/// slot `first`, available.
pub fn chain(q: &MockSplitQueue<GuestMemory>, first: u16, descs: &[(u64, u32, bool)]) {
    for (i, &(a, l, w)) in descs.iter().enumerate() {
        let mut f = if w { WRITE } else { 0 };
        if i + 1 < descs.len() {
            f |= NEXT;
        }
        let slot = first + i as u16;
        let d = RawDescriptor::from(Descriptor::new(a, l, f, slot + 1));
        q.desc_table().store(slot, d).unwrap();
    }
    let idx = q.avail().idx().load();
    q.avail().ring().ref_at(idx.into()).unwrap().store(first);
    q.avail().idx().store(idx + 1);
}

/// The lengths in the used ring so far.
pub fn used_lengths(mem: &GuestMemory, q: &MockSplitQueue<GuestMemory>) -> Vec<u32> {
    let idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
    (0..idx)
        .map(|i| {
            mem.read_obj(q.used_addr().unchecked_add(8 + 8 * u64::from(i)))
                .unwrap()
        })
        .collect()
}

/// xorshift64: the same random driver behaviour on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
