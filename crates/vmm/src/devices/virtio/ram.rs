//! Guest RAM as the device thread touches it on the data path: each
//! region's host mapping is looked up once per batch of chains, so a
//! descriptor, a request header or a status byte costs a bounds check and
//! a copy. (vm-memory's `Bytes` runs every such access through its generic
//! slice iterator: about half of virtio-blk's own time per 4 KiB request.)
//! Writes mark the region's dirty bitmap, as vm-memory's writes do, when
//! it has one (dirty pages tracked: `vm::dirty_bitmap`).

use crate::vm::GuestMemory;
use std::sync::atomic::{AtomicU16, Ordering};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{ByteValued, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

struct Region<'m> {
    start: u64,
    len: u64,
    host: *mut u8,
    /// None when dirty pages are not tracked (an empty bitmap).
    bitmap: Option<&'m AtomicBitmap>,
}

impl Region<'_> {
    /// Marks the pages of `[off, off + len)` dirty: bit indices by shift,
    /// not by vm-memory's division by a page size it keeps at run time.
    fn mark_dirty(&self, off: u64, len: usize) {
        let Some(bitmap) = self.bitmap else {
            return;
        };
        if len == 0 {
            return;
        }
        let first = (off >> PAGE_SHIFT) as usize;
        let last = ((off + len as u64 - 1) >> PAGE_SHIFT) as usize;
        for page in first..=last {
            bitmap.set_bit(page);
        }
    }
}

const PAGE_SHIFT: u32 = crate::vm::DIRTY_PAGE.trailing_zeros();

/// The host mappings of a `GuestMemory`, valid while it is borrowed (the
/// regions' bitmaps borrow it).
pub struct HostRam<'m> {
    regions: Vec<Region<'m>>,
}

impl<'m> HostRam<'m> {
    pub fn new(mem: &'m GuestMemory) -> HostRam<'m> {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                // The region's own bitmap (its slice view starts at 0).
                let bitmap: &AtomicBitmap = std::ops::Deref::deref(r).bitmap();
                Some(Region {
                    start: r.start_addr().0,
                    len: r.len(),
                    host,
                    bitmap: (bitmap.len() > 0).then_some(bitmap),
                })
            })
            .collect();
        HostRam { regions }
    }

    /// The region holding all of `[gpa, gpa + len)`, and `gpa`'s offset in
    /// it. A range that spans two regions is refused: RAM ranges are
    /// never adjacent (the layout leaves holes between them).
    fn find(&self, gpa: u64, len: usize) -> Option<(&Region<'m>, u64)> {
        let end = gpa.checked_add(len as u64)?;
        self.regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.start)?;
            (end - r.start <= r.len).then_some((r, off))
        })
    }

    /// Host address of `[gpa, gpa + len)`, if it lies in guest RAM.
    pub fn host_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        // SAFETY: `find` checked that off + len is inside the region's
        // mapping, which lives as long as the borrowed GuestMemory.
        self.find(gpa, len)
            .map(|(r, off)| unsafe { r.host.add(off as usize) })
    }

    /// Whether all of `[gpa, gpa + len)` is guest RAM.
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        self.find(gpa, len).is_some()
    }

    /// Host address of `[gpa, gpa + len)` for the device to write behind
    /// vm-memory's back (through an iovec): the range is marked dirty.
    pub fn host_ptr_for_write(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let (r, off) = self.find(gpa, len)?;
        r.mark_dirty(off, len);
        // SAFETY: `find` checked that off + len is inside the region's
        // mapping, which lives as long as the borrowed GuestMemory.
        Some(unsafe { r.host.add(off as usize) })
    }

    /// A `T` read from `gpa` once, into a copy the guest cannot change.
    pub fn read_obj<T: ByteValued + Default>(&self, gpa: u64) -> Option<T> {
        let mut v = T::default();
        self.read(gpa, v.as_mut_slice()).then_some(v)
    }

    /// Fills `buf` from `gpa`; false (and `buf` unspecified) if the range
    /// is not all guest RAM. An empty `buf` reads nothing, anywhere (as
    /// vm-memory's reads).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(p) = self.host_ptr(gpa, buf.len()) else {
            return false;
        };
        // SAFETY: buf.len() bytes at p are mapped guest RAM (host_ptr) and
        // cannot overlap `buf`, a host buffer.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// The host address of the 2-aligned u16 at `gpa`, for a ring index.
    fn u16_at(&self, gpa: u64, write: bool) -> Option<*mut u16> {
        if !gpa.is_multiple_of(2) {
            return None;
        }
        let p = if write {
            self.host_ptr_for_write(gpa, 2)?
        } else {
            self.host_ptr(gpa, 2)?
        };
        (p as usize).is_multiple_of(2).then_some(p.cast())
    }

    /// The little-endian u16 at `gpa` (a ring index the driver publishes),
    /// loaded atomically with `order`; None if it is not 2-aligned guest RAM.
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> Option<u16> {
        let p = self.u16_at(gpa, false)?;
        // SAFETY: p is 2 bytes of mapped guest RAM (`find`), 2-aligned
        // (checked), for as long as the GuestMemory is borrowed; the guest
        // may write it concurrently, which the atomic access allows.
        Some(u16::from_le(unsafe { AtomicU16::from_ptr(p) }.load(order)))
    }

    /// Stores `v` little-endian at `gpa` with `order` (a ring index the
    /// device publishes) and marks it dirty; false if it is not 2-aligned
    /// guest RAM.
    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> bool {
        let Some(p) = self.u16_at(gpa, true) else {
            return false;
        };
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p) }.store(v.to_le(), order);
        true
    }

    /// Writes `data` at `gpa` and marks it dirty; false (nothing written)
    /// if the range is not all guest RAM. Empty `data` writes nothing,
    /// anywhere.
    pub fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let Some(p) = self.host_ptr_for_write(gpa, data.len()) else {
            return false;
        };
        // SAFETY: data.len() bytes at p are mapped guest RAM
        // (host_ptr_for_write) and cannot overlap `data`, a host buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{Bytes, GuestAddress};

    fn two_regions() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x10000), 0x2000)])
            .unwrap()
    }

    #[test]
    fn reads_and_writes_stay_inside_one_region() {
        let mem = two_regions();
        let ram = HostRam::new(&mem);
        assert!(ram.write(0x3ffc, b"abcd"));
        assert_eq!(ram.read_obj::<[u8; 4]>(0x3ffc), Some(*b"abcd"));
        assert_eq!(
            mem.read_obj::<[u8; 4]>(GuestAddress(0x3ffc)).unwrap(),
            *b"abcd"
        );
        assert!(!ram.write(0x3ffe, b"abcd"), "runs past the first region");
        assert!(ram.read_obj::<u16>(0x3fff).is_none());
        assert!(!ram.contains(0x4000, 1), "the hole between regions");
        assert!(ram.contains(0x11fff, 1) && !ram.contains(0x11fff, 2));
        assert!(ram.contains(0x10000, 0));
        assert!(!ram.contains(u64::MAX, 2), "wraps around");
        let mut b = [0u8; 3];
        assert!(ram.read(0x10000, &mut b) && !ram.read(0x11ffe, &mut b));
        // As vm-memory: an empty access touches nothing and succeeds.
        assert!(ram.read(0x8000, &mut []) && ram.write(u64::MAX, &[]));
    }

    #[test]
    fn writes_and_marks_are_dirty_pages() {
        let mem = two_regions();
        let ram = HostRam::new(&mem);
        let r1 = mem.iter().nth(1).unwrap();
        assert!(ram.write(0x10ff8, &[1; 16]));
        assert!(r1.bitmap().dirty_at(0) && r1.bitmap().dirty_at(0x1000));
        assert!(ram.host_ptr_for_write(0x2000, 1).is_some());
        assert!(mem.iter().next().unwrap().bitmap().dirty_at(0x2000));
        assert!(!mem.iter().next().unwrap().bitmap().dirty_at(0x1000));
    }

    #[test]
    fn ring_indices_are_aligned_little_endian_u16s() {
        let mem = two_regions();
        let ram = HostRam::new(&mem);
        assert!(ram.store_u16(0x10002, 0x1234, Ordering::Release));
        assert_eq!(
            mem.read_obj::<[u8; 2]>(GuestAddress(0x10002)).unwrap(),
            [0x34, 0x12]
        );
        assert_eq!(ram.load_u16(0x10002, Ordering::Acquire), Some(0x1234));
        assert!(mem.iter().nth(1).unwrap().bitmap().dirty_at(0));
        assert_eq!(ram.load_u16(0x10003, Ordering::Acquire), None, "odd");
        assert!(!ram.store_u16(0x3fff, 1, Ordering::Release), "odd");
        assert_eq!(ram.load_u16(0x4000, Ordering::Acquire), None, "a hole");
        assert!(!ram.store_u16(0x12000, 1, Ordering::Release), "past RAM");
    }
    /// Without dirty page tracking the bitmaps are empty and a device
    /// write marks nothing; with it, the pages HostRam marks (by shift)
    /// are exactly those vm-memory's own marking (by division) would.
    #[test]
    fn marks_match_vm_memory_and_are_skipped_untracked() {
        use crate::vm::guest_ram;
        let ranges = [(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x8000)];
        let untracked = guest_ram(&ranges, false, None).unwrap();
        let ram = HostRam::new(&untracked);
        assert!(ram.write(0x0ff8, &[1; 16]) && ram.store_u16(0x20002, 7, Ordering::Release));
        assert_eq!(ram.read_obj::<u8>(0x1000), Some(1), "the write lands");
        let empty = |r: &vm_memory::GuestRegionMmap<AtomicBitmap>| {
            let b: &AtomicBitmap = std::ops::Deref::deref(r).bitmap();
            b.len() == 0
        };
        assert!(untracked.iter().all(empty));

        let mut rng = super::super::test_util::Rng(0x5eed);
        for _ in 0..500 {
            let (ours, theirs) = (
                guest_ram(&ranges, true, None).unwrap(),
                guest_ram(&ranges, true, None).unwrap(),
            );
            let ram = HostRam::new(&ours);
            for _ in 0..4 {
                let (region, size) = if rng.below(2) == 0 {
                    (0, 0x10000)
                } else {
                    (1, 0x8000)
                };
                let off = rng.below(size);
                let len = rng.below(size - off + 1) as usize;
                let start = ranges[region].0 .0;
                let marked = ram.host_ptr_for_write(start + off, len).is_some();
                assert!(marked, "{off:#x}+{len:#x} lies in region {region}");
                let r = theirs.iter().nth(region).unwrap();
                r.bitmap().mark_dirty(off as usize, len);
            }
            for (a, b) in ours.iter().zip(theirs.iter()) {
                for page in (0..a.len() as usize).step_by(crate::vm::DIRTY_PAGE) {
                    assert_eq!(
                        a.bitmap().dirty_at(page),
                        b.bitmap().dirty_at(page),
                        "page {page:#x}"
                    );
                }
            }
        }
    }
}
