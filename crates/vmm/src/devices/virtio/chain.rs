//! A descriptor chain the driver made available, walked once into its
//! device-readable and device-writable buffers. `ring` takes its head from
//! the available ring; the walk reads descriptors through `HostRam`, with
//! the rules of virtio-queue's `DescriptorChain` iterator, into buffers a
//! device reuses from chain to chain.

use super::ram::{HostRam, Span};
use super::ring::{pop_avail, push_used, Rings};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};

/// Guest buffers as (address, length).
pub type Segments = Vec<(u64, usize)>;

/// A chain's buffers: device-readable, then device-writable.
pub type Buffers<'c> = (&'c [(u64, usize)], &'c [(u64, usize)]);

const DESC_SIZE: u64 = std::mem::size_of::<Descriptor>() as u64;

#[derive(Default)]
pub struct Chain<'m> {
    head: u16,
    readable: Segments,
    writable: Segments,
    /// A buffer runs past the end of the address space (found by fuzzing:
    /// its end overflowed).
    malformed: bool,
    /// The queue's rings, looked up at this batch's first pop.
    rings: Option<Rings<'m>>,
}

impl<'m> Chain<'m> {
    pub fn new() -> Chain<'m> {
        Chain::default()
    }

    /// The head descriptor's index, which the used entry names.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Takes the next chain the driver made available and walks it; false
    /// when there is none.
    pub fn pop(&mut self, queue: &mut Queue, ram: &HostRam<'m>) -> bool {
        let rings = self.rings.get_or_insert_with(|| Rings::new(queue, ram));
        let Some(head) = pop_avail(queue, ram, rings) else {
            return false;
        };
        let table = rings.desc;
        self.walk_in(ram, table, queue.desc_table(), queue.size(), head);
        true
    }

    /// Returns the last chain popped to the driver, `len` bytes written
    /// into it (see `ring::push_used`).
    pub fn push_used(&self, queue: &mut Queue, ram: &HostRam<'m>, len: u32) -> bool {
        self.push_used_for(queue, ram, self.head, len)
    }

    /// Returns the chain at `head`, one this batch popped earlier.
    pub fn push_used_for(&self, queue: &mut Queue, ram: &HostRam<'m>, head: u16, len: u32) -> bool {
        match &self.rings {
            Some(rings) => push_used(queue, ram, rings, head, len),
            None => push_used(queue, ram, &Rings::new(queue, ram), head, len),
        }
    }

    /// Walks the chain at `head` of the descriptor table at `table` with
    /// `size` entries. As virtio-queue's iterator: at most `size`
    /// descriptors, one indirect table (16-byte entries, not nested), a
    /// descriptor outside RAM or an index outside the table ends the chain,
    /// and so does a total past 4 GiB.
    pub fn walk(&mut self, ram: &HostRam<'m>, table: u64, size: u16, head: u16) {
        let mapped = ram.span(table, usize::from(size) * DESC_SIZE as usize);
        self.walk_in(ram, mapped, table, size, head);
    }

    /// `walk`, with the table already looked up in guest RAM (`mapped`)
    /// when all of it is there; each table is looked up once, not once per
    /// descriptor.
    fn walk_in(
        &mut self,
        ram: &HostRam<'m>,
        mapped: Option<Span<'m>>,
        table: u64,
        size: u16,
        head: u16,
    ) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.malformed = false;
        let (mut table, mut size, mut next, mut ttl) = (table, size, head, size);
        let mut mapped = mapped;
        let mut indirect = false;
        let mut total = 0u32;
        while ttl > 0 && next < size {
            let Some(at) = table.checked_add(u64::from(next) * DESC_SIZE) else {
                return;
            };
            let d = match &mapped {
                Some(t) => t.read_obj::<Descriptor>(at),
                None => ram.read_obj::<Descriptor>(at),
            };
            let Some(d) = d else {
                return;
            };
            let (addr, len) = (d.addr().0, d.len());
            if d.refers_to_indirect_table() {
                let entries = len / DESC_SIZE as u32;
                if indirect || len % DESC_SIZE as u32 != 0 || entries > u32::from(u16::MAX) {
                    return;
                }
                (table, size, next, ttl, indirect) =
                    (addr, entries as u16, 0, entries as u16, true);
                mapped = ram.span(addr, len as usize);
                continue;
            }
            let Some(t) = total.checked_add(len) else {
                return;
            };
            total = t;
            if addr.checked_add(u64::from(len)).is_none() {
                self.malformed = true;
                return;
            }
            let seg = (addr, len as usize);
            if d.is_write_only() {
                self.writable.push(seg);
            } else {
                self.readable.push(seg);
            }
            if d.has_next() {
                next = d.next();
                ttl -= 1;
            } else {
                ttl = 0;
            }
        }
    }

    /// The buffers, device-readable and device-writable apart; `None` for
    /// a malformed chain. Whether they lie in guest RAM is checked when
    /// they are used.
    pub fn buffers(&self) -> Option<Buffers<'_>> {
        (!self.malformed).then_some((&self.readable, &self.writable))
    }

    /// A chain the device only reads (a transmit buffer) holding a length
    /// in `len`: its buffers. `None` for a device-writable buffer, a length
    /// out of range, or a malformed chain.
    pub fn device_readable(&self, len: std::ops::RangeInclusive<usize>) -> Option<&[(u64, usize)]> {
        let (r, w) = self.buffers()?;
        (w.is_empty() && len.contains(&total_len(r))).then_some(r)
    }

    /// A chain the device only writes (a receive buffer) of at least `min`
    /// bytes: its buffers. `None` for a device-readable buffer, too little
    /// room, or a malformed chain.
    pub fn device_writable(&self, min: usize) -> Option<&[(u64, usize)]> {
        let (r, w) = self.buffers()?;
        (r.is_empty() && total_len(w) >= min).then_some(w)
    }
}

pub fn total_len(segs: &[(u64, usize)]) -> usize {
    segs.iter().map(|s| s.1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_util::Rng;
    use crate::vm::GuestMemory;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    const RAM: u64 = 0x10_0000;
    const RING: u64 = 0x1000;
    /// Where the random indirect descriptors point; the buffers in that
    /// table lie at 0x6_0000, the others at 0x2_0000.
    const INDIRECT: u64 = 0x8000;

    /// A descriptor as a driver gone wrong might write it: mostly sane,
    /// sometimes past RAM, past the address space, huge, or indirect
    /// (also misaligned, empty and nested).
    fn random_desc(r: &mut Rng, size: u16, base: u64) -> Descriptor {
        let mut flags = (r.below(4) as u16) & (F_NEXT | F_WRITE);
        let (mut addr, mut len) = (base + r.below(0x1000), r.below(0x3000) as u32);
        match r.below(16) {
            0 => addr = RAM - r.below(0x20),
            1 => addr = u64::MAX - r.below(0x2000),
            2 => len = u32::MAX - r.below(4) as u32,
            3 | 4 => {
                flags |= F_INDIRECT;
                addr = INDIRECT;
                len = match r.below(4) {
                    0 => r.below(0x200) as u32,
                    1 => 0,
                    _ => 16 * (1 + r.below(8) as u32),
                };
            }
            _ => {}
        }
        let next = r.below(u64::from(size) + 2) as u16;
        Descriptor::new(addr, len, flags, next)
    }

    /// On random tables, the walk finds what virtio-queue's own iterator
    /// finds (readable and writable buffers in order), up to a buffer that
    /// runs past the end of the address space, where it stops and says so.
    #[test]
    fn the_walk_agrees_with_virtio_queue_on_random_tables() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let ram = HostRam::new(&mem);
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut malformed, mut indirect, mut long) = (0, 0, 0);
        for _ in 0..20_000 {
            let size = 1u16 << r.below(5);
            let vq = MockSplitQueue::create(&mem, GuestAddress(RING), size);
            let table = vq.desc_table_addr().0;
            for i in 0..u64::from(size) {
                mem.write_obj(
                    random_desc(&mut r, size, 0x2_0000),
                    GuestAddress(table + 16 * i),
                )
                .unwrap();
            }
            for i in 0..8 {
                mem.write_obj(
                    random_desc(&mut r, 8, 0x6_0000),
                    GuestAddress(INDIRECT + 16 * i),
                )
                .unwrap();
            }
            let head = r.below(u64::from(size) + 1) as u16;
            let avail = vq.avail_addr().0;
            mem.write_obj(head, GuestAddress(avail + 4)).unwrap();
            mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
            let mut q: Queue = vq.create_queue().unwrap();
            let theirs: Vec<_> = q
                .pop_descriptor_chain(&mem)
                .unwrap()
                .map(|d| (d.addr().0, d.len() as usize, d.is_write_only()))
                .collect();
            let mut chain = Chain::new();
            chain.walk(&ram, q.desc_table(), q.size(), head);
            let cut = theirs
                .iter()
                .position(|&(a, l, _)| a.checked_add(l as u64).is_none());
            let expect = &theirs[..cut.unwrap_or(theirs.len())];
            let pick = |w: bool| -> Vec<(u64, usize)> {
                expect
                    .iter()
                    .filter(|d| d.2 == w)
                    .map(|d| (d.0, d.1))
                    .collect()
            };
            assert_eq!(chain.malformed, cut.is_some(), "{theirs:x?}");
            assert_eq!(chain.readable, pick(false), "{theirs:x?}");
            assert_eq!(chain.writable, pick(true), "{theirs:x?}");
            assert_eq!(chain.head(), head);
            malformed += usize::from(chain.malformed);
            indirect += usize::from(theirs.iter().any(|d| (0x6_0000..0x6_1000).contains(&d.0)));
            long += usize::from(theirs.len() > 3);
        }
        // The cases the generator is for did come up.
        assert!(
            malformed > 100 && indirect > 100 && long > 100,
            "{malformed} {indirect} {long}"
        );
    }

    #[test]
    fn buffers_by_direction_and_size() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let ram = HostRam::new(&mem);
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let d = Descriptor::new(addr, len, flags, next);
            mem.write_obj(d, GuestAddress(RING + 16 * i)).unwrap();
        };
        desc(0, 0x2000, 10, F_NEXT, 1);
        desc(1, 0x3000, 20, 0, 0);
        desc(2, 0x4000, 30, F_WRITE, 0);
        let mut c = Chain::new();
        c.walk(&ram, RING, 4, 0);
        assert_eq!(
            c.device_readable(30..=30),
            Some(&[(0x2000, 10), (0x3000, 20)][..])
        );
        assert_eq!(c.device_readable(31..=99), None);
        assert_eq!(c.device_writable(0), None);
        c.walk(&ram, RING, 4, 2);
        assert_eq!(c.device_writable(30), Some(&[(0x4000, 30)][..]));
        assert_eq!(c.device_writable(31), None);
        assert_eq!(c.device_readable(0..=99), None);
    }
}
