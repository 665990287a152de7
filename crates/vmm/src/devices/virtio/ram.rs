//! Guest RAM as the device thread touches it on the data path: each
//! region's host mapping is looked up once per batch of chains, and each
//! queue's rings once per batch too (`Span`), so a descriptor, a request
//! header or a status byte costs a bounds check and a copy. (vm-memory's
//! `Bytes` runs every such access through its generic slice iterator:
//! about half of virtio-blk's own time per 4 KiB request.)
//! Writes mark the region's dirty bitmap, as vm-memory's writes do, when
//! it has one (dirty pages tracked: `vm::dirty_bitmap`).

use crate::vm::GuestMemory;
use std::sync::atomic::{AtomicU16, Ordering};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{ByteValued, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// A stretch of guest RAM inside one region, with its host mapping: a
/// whole region, or a ring a device looks up once per batch of chains
/// (`HostRam::span`) and then reads and writes without a region search.
#[derive(Clone, Copy)]
pub struct Span<'m> {
    start: u64,
    len: u64,
    host: *mut u8,
    /// `start`'s offset in its region, which the dirty bitmap counts from.
    page_base: u64,
    /// None when dirty pages are not tracked (an empty bitmap).
    bitmap: Option<&'m AtomicBitmap>,
}

impl<'m> Span<'m> {
    /// `gpa`'s offset in the span when all of `[gpa, gpa + len)` is in it.
    fn locate(&self, gpa: u64, len: usize) -> Option<u64> {
        let off = gpa.checked_sub(self.start)?;
        let end = off.checked_add(len as u64)?;
        (end <= self.len).then_some(off)
    }

    /// Marks the pages of `[off, off + len)` dirty: bit indices by shift,
    /// not by vm-memory's division by a page size it keeps at run time.
    fn mark_dirty(&self, off: u64, len: usize) {
        let Some(bitmap) = self.bitmap else {
            return;
        };
        if len == 0 {
            return;
        }
        let off = self.page_base + off;
        let first = (off >> PAGE_SHIFT) as usize;
        let last = ((off + len as u64 - 1) >> PAGE_SHIFT) as usize;
        for page in first..=last {
            bitmap.set_bit(page);
        }
    }

    /// The host address `off` bytes in; `off` came from `locate`.
    fn at(&self, off: u64) -> *mut u8 {
        // SAFETY: `locate` checked that off (+ the access's length) lies
        // inside the span, a mapping that lives as long as the borrowed
        // GuestMemory ('m).
        unsafe { self.host.add(off as usize) }
    }

    /// Host address of `[gpa, gpa + len)`, if it lies in the span.
    pub fn host_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.locate(gpa, len).map(|off| self.at(off))
    }

    /// As `host_ptr`, for the device to write behind vm-memory's back
    /// (through an iovec): the range is marked dirty.
    pub fn host_ptr_for_write(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let off = self.locate(gpa, len)?;
        self.mark_dirty(off, len);
        Some(self.at(off))
    }

    /// A `T` read from `gpa` once, into a copy the guest cannot change.
    pub fn read_obj<T: ByteValued>(&self, gpa: u64) -> Option<T> {
        let p = self.host_ptr(gpa, std::mem::size_of::<T>())?;
        // SAFETY: size_of::<T>() bytes at p are mapped guest RAM
        // (host_ptr), any bytes are a valid T (ByteValued), and the read
        // may be unaligned.
        Some(unsafe { std::ptr::read_unaligned(p.cast::<T>()) })
    }

    /// Fills `buf` from `gpa`; false (and `buf` unspecified) if the range
    /// is not all in the span. An empty `buf` reads nothing, anywhere (as
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
    /// loaded atomically with `order`; None if it is not 2-aligned and in
    /// the span.
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> Option<u16> {
        let p = self.u16_at(gpa, false)?;
        // SAFETY: p is 2 bytes of mapped guest RAM (`locate`), 2-aligned
        // (checked), for as long as the GuestMemory is borrowed; the guest
        // may write it concurrently, which the atomic access allows.
        Some(u16::from_le(unsafe { AtomicU16::from_ptr(p) }.load(order)))
    }

    /// Stores `v` little-endian at `gpa` with `order` (a ring index the
    /// device publishes) and marks it dirty; false if it is not 2-aligned
    /// and in the span.
    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> bool {
        let Some(p) = self.u16_at(gpa, true) else {
            return false;
        };
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(p) }.store(v.to_le(), order);
        true
    }

    /// Writes `data` at `gpa` and marks it dirty; false (nothing written)
    /// if the range is not all in the span. Empty `data` writes nothing,
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

const PAGE_SHIFT: u32 = crate::vm::DIRTY_PAGE.trailing_zeros();

/// The host mappings of a `GuestMemory`, valid while it is borrowed (the
/// regions' bitmaps borrow it).
pub struct HostRam<'m> {
    regions: Vec<Span<'m>>,
}

impl<'m> HostRam<'m> {
    pub fn new(mem: &'m GuestMemory) -> HostRam<'m> {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                // The region's own bitmap (its slice view starts at 0).
                let bitmap: &AtomicBitmap = std::ops::Deref::deref(r).bitmap();
                Some(Span {
                    start: r.start_addr().0,
                    len: r.len(),
                    host,
                    page_base: 0,
                    bitmap: (bitmap.len() > 0).then_some(bitmap),
                })
            })
            .collect();
        HostRam { regions }
    }

    /// The region `gpa` lies in (or ends at): the access's own span method
    /// then checks the whole range, once. A range that spans two regions
    /// is refused there: RAM ranges are never adjacent (the layout leaves
    /// holes between them).
    fn find(&self, gpa: u64) -> Option<&Span<'m>> {
        self.regions
            .iter()
            .find(|r| gpa.wrapping_sub(r.start) <= r.len)
    }

    /// `[gpa, gpa + len)` as a span of its own, when all of it is guest
    /// RAM: a ring looked up once, then accessed without a search.
    pub fn span(&self, gpa: u64, len: usize) -> Option<Span<'m>> {
        let r = self.find(gpa)?;
        let off = r.locate(gpa, len)?;
        Some(Span {
            start: gpa,
            len: len as u64,
            host: r.at(off),
            page_base: r.page_base + off,
            bitmap: r.bitmap,
        })
    }

    /// Host address of `[gpa, gpa + len)`, if it lies in guest RAM.
    pub fn host_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.find(gpa)?.host_ptr(gpa, len)
    }

    /// Whether all of `[gpa, gpa + len)` is guest RAM.
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        self.find(gpa).is_some_and(|r| r.locate(gpa, len).is_some())
    }

    /// Host address of `[gpa, gpa + len)` for the device to write behind
    /// vm-memory's back (through an iovec): the range is marked dirty.
    pub fn host_ptr_for_write(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        self.find(gpa)?.host_ptr_for_write(gpa, len)
    }

    /// A `T` read from `gpa` once, into a copy the guest cannot change.
    pub fn read_obj<T: ByteValued>(&self, gpa: u64) -> Option<T> {
        self.find(gpa)?.read_obj(gpa)
    }

    /// Fills `buf` from `gpa`; false (and `buf` unspecified) if the range
    /// is not all guest RAM. An empty `buf` reads nothing, anywhere (as
    /// vm-memory's reads).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        buf.is_empty() || self.find(gpa).is_some_and(|r| r.read(gpa, buf))
    }

    /// The little-endian u16 at `gpa` (a ring index the driver publishes),
    /// loaded atomically with `order`; None if it is not 2-aligned guest RAM.
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> Option<u16> {
        self.find(gpa)?.load_u16(gpa, order)
    }

    /// Stores `v` little-endian at `gpa` with `order` (a ring index the
    /// device publishes) and marks it dirty; false if it is not 2-aligned
    /// guest RAM.
    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> bool {
        self.find(gpa).is_some_and(|r| r.store_u16(gpa, v, order))
    }

    /// Writes `data` at `gpa` and marks it dirty; false (nothing written)
    /// if the range is not all guest RAM. Empty `data` writes nothing,
    /// anywhere.
    pub fn write(&self, gpa: u64, data: &[u8]) -> bool {
        data.is_empty() || self.find(gpa).is_some_and(|r| r.write(gpa, data))
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

    /// A span answers as `HostRam` does inside it, refuses what leaves it,
    /// and marks the same dirty pages (its bitmap counts from the region,
    /// not from the span).
    #[test]
    fn spans_answer_as_host_ram_inside_them() {
        use crate::vm::guest_ram;
        let ranges = [(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x8000)];
        let mut rng = super::super::test_util::Rng(0x5a17);
        for _ in 0..300 {
            let (ours, theirs) = (
                guest_ram(&ranges, true, None).unwrap(),
                guest_ram(&ranges, true, None).unwrap(),
            );
            let (a, b) = (HostRam::new(&ours), HostRam::new(&theirs));
            let region = rng.below(2) as usize;
            let (base, size) = (ranges[region].0 .0, ranges[region].1 as u64);
            let start = base + rng.below(size);
            let len = rng.below(base + size - start + 1) as usize;
            let span = a.span(start, len).expect("inside one region");
            assert!(a.span(start, (base + size - start) as usize + 1).is_none());
            for _ in 0..8 {
                let at = start.saturating_sub(4) + rng.below(len as u64 + 8);
                let n = 1 + rng.below(8) as usize;
                let inside = at >= start && at + n as u64 <= start + len as u64;
                let data = [rng.below(256) as u8; 8];
                assert_eq!(span.write(at, &data[..n]), inside, "{at:#x}+{n}");
                if inside {
                    assert!(b.write(at, &data[..n]));
                    assert_eq!(span.read_obj::<u8>(at), b.read_obj::<u8>(at));
                    let even = at & !1;
                    if even >= start && even + 2 <= start + len as u64 {
                        assert!(span.store_u16(even, 0x1234, Ordering::Relaxed));
                        assert!(b.store_u16(even, 0x1234, Ordering::Relaxed));
                        assert_eq!(span.load_u16(even, Ordering::Relaxed), Some(0x1234));
                    }
                }
            }
            for (x, y) in ours.iter().zip(theirs.iter()) {
                for page in (0..x.len() as usize).step_by(crate::vm::DIRTY_PAGE) {
                    assert_eq!(x.bitmap().dirty_at(page), y.bitmap().dirty_at(page));
                }
            }
            let (mut bx, mut by) = (vec![0u8; size as usize], vec![0u8; size as usize]);
            ours.read_slice(&mut bx, GuestAddress(ranges[region].0 .0))
                .unwrap();
            theirs
                .read_slice(&mut by, GuestAddress(ranges[region].0 .0))
                .unwrap();
            assert_eq!(bx, by);
        }
    }
}
