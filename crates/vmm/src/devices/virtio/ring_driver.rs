//! A minimal split-ring driver on the host side: lays out a queue in guest
//! memory and posts descriptor chains, as a guest driver would. Used by
//! `tsubame bench blk` to measure device-side processing without a guest.

use crate::vm::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("queue of size {0}: {1}")]
    Queue(u16, virtio_queue::Error),
    #[error("queue at {0:#x} does not fit in guest memory")]
    Layout(u64),
    #[error("ring write: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

pub struct RingDriver {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Next free descriptor slot (chains are laid out round-robin).
    next_desc: u16,
    avail_idx: u16,
}

impl RingDriver {
    /// A ready queue of `size` at `base` (needs `size * 16 + 2 * 4096`
    /// bytes of guest memory).
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Result<(RingDriver, Queue), Error> {
        let desc = base;
        let avail = base + u64::from(size) * 16;
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        for a in [avail, used] {
            mem.write_obj(0u32, GuestAddress(a))?;
        }
        let mut q = Queue::new(size).map_err(|e| Error::Queue(size, e))?;
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(Error::Layout(base));
        }
        Ok((
            RingDriver {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
            },
            q,
        ))
    }

    /// Posts one chain of (address, length, device-writable) buffers.
    pub fn post(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> Result<(), Error> {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let slot = (head + i as u16) % self.size;
            let next = (slot + 1) % self.size;
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&d, GuestAddress(self.desc + u64::from(slot) * 16))?;
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        let ring_slot = self.avail_idx % self.size;
        let slot_addr = GuestAddress(self.avail + 4 + 2 * u64::from(ring_slot));
        mem.write_obj(head, slot_addr)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))?;
        Ok(())
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }

    /// Used entry `i` (counted from the start): the chain's head and the
    /// length the device wrote.
    pub fn used_entry(&self, mem: &GuestMemory, i: u16) -> Option<(u32, u32)> {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let e: [u32; 2] = mem.read_obj(GuestAddress(at)).ok()?;
        Some((u32::from_le(e[0]), u32::from_le(e[1])))
    }

    /// The head the next `post` will use.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posted_chains_reach_a_device() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut d, mut q) = RingDriver::new(&mem, 0x1000, 8).unwrap();
        let mut rng = super::super::rng::Rng::default();
        for _ in 0..20 {
            d.post(&mem, &[(0x8000, 32, true)]).unwrap();
            use super::super::VirtioDevice;
            assert!(rng
                .process_queue(0, std::slice::from_mut(&mut q), &mem)
                .any());
        }
        assert_eq!(d.used_idx(&mem), 20);
    }
}
