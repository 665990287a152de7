//! A descriptor chain's buffers as host `iovec`s, so a device moves data
//! between guest memory and a file, tap or socket in one system call,
//! without a bounce buffer. Every buffer is checked against guest memory
//! when it is mapped.

use super::ram::HostRam;
use smallvec::SmallVec;
use std::marker::PhantomData;

pub use super::chain::{total_len, Segments};

/// `segs` without its first `n` bytes.
pub fn skip_front(segs: &[(u64, usize)], n: usize) -> Segments {
    let mut out = Vec::new();
    skip_front_into(segs, n, &mut out);
    out
}

/// [`skip_front`] into `out` (cleared first), reusing its allocation.
pub fn skip_front_into(segs: &[(u64, usize)], mut n: usize, out: &mut Segments) {
    out.clear();
    for &(addr, len) in segs {
        if n >= len {
            n -= len;
        } else {
            out.push((addr + n as u64, len - n));
            n = 0;
        }
    }
}

/// The first `n` bytes of `segs`.
pub fn take_front(segs: &[(u64, usize)], n: usize) -> Segments {
    let mut out = Vec::new();
    take_front_into(segs, n, &mut out);
    out
}

/// [`take_front`] into `out` (cleared first), reusing its allocation.
pub fn take_front_into(segs: &[(u64, usize)], mut n: usize, out: &mut Segments) {
    out.clear();
    for &(addr, len) in segs {
        if n == 0 {
            break;
        }
        let take = len.min(n);
        if take > 0 {
            out.push((addr, take));
        }
        n -= take;
    }
}

/// Fills `buf` from the start of `segs`; false if they hold too little
/// or leave guest memory.
pub fn read_bytes(ram: &HostRam, segs: &[(u64, usize)], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for &(addr, len) in segs {
        if done == buf.len() {
            break;
        }
        let n = len.min(buf.len() - done);
        if !ram.read(addr, &mut buf[done..done + n]) {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Writes `data` at byte `at` of `segs`; false if they hold too little or
/// leave guest memory.
pub fn write_bytes(ram: &HostRam, segs: &[(u64, usize)], mut at: usize, mut data: &[u8]) -> bool {
    for &(addr, len) in segs {
        if data.is_empty() {
            break;
        }
        if at >= len {
            at -= len;
            continue;
        }
        let n = (len - at).min(data.len());
        if !ram.write(addr + at as u64, &data[..n]) {
            return false;
        }
        data = &data[n..];
        at = 0;
    }
    data.is_empty()
}

/// Every buffer lies inside guest memory.
pub fn in_memory(ram: &HostRam, segs: &[(u64, usize)]) -> bool {
    segs.iter().all(|&(a, l)| l == 0 || ram.contains(a, l))
}

/// Mapped guest buffers, valid while the guest memory they came from is
/// borrowed.
pub struct IoVecs<'m> {
    /// Inline up to four: a request's data (virtio-blk) or a frame
    /// (virtio-net) takes one or two buffers, and a heap allocation per
    /// request was a tenth of the device's own time.
    iov: SmallVec<[libc::iovec; 4]>,
    /// Index of the first iovec not yet consumed (see `advance`).
    first: usize,
    _mem: PhantomData<&'m HostRam<'m>>,
}

impl<'m> IoVecs<'m> {
    /// Maps `segs` for the device to read; `None` when any buffer leaves
    /// guest memory. Zero-length buffers are left out.
    pub fn new(ram: &'m HostRam<'m>, segs: &[(u64, usize)]) -> Option<IoVecs<'m>> {
        Self::map(ram, segs, false)
    }

    /// Maps `segs` for the device to write. Writes through raw iovecs
    /// bypass vm-memory, so their pages are marked dirty here (for Diff
    /// snapshots).
    pub fn writable(ram: &'m HostRam<'m>, segs: &[(u64, usize)]) -> Option<IoVecs<'m>> {
        Self::map(ram, segs, true)
    }

    fn map(ram: &'m HostRam<'m>, segs: &[(u64, usize)], dirty: bool) -> Option<IoVecs<'m>> {
        let mut iov = SmallVec::with_capacity(segs.len());
        for &(addr, len) in segs {
            if len == 0 {
                continue;
            }
            // One mapping per buffer: RAM ranges are never adjacent, so a
            // buffer that leaves its region is invalid anyway.
            let base = match dirty {
                true => ram.host_ptr_for_write(addr, len)?,
                false => ram.host_ptr(addr, len)?,
            };
            iov.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            });
        }
        Some(IoVecs {
            iov,
            first: 0,
            _mem: PhantomData,
        })
    }

    /// The iovecs not yet consumed, at most `IOV_MAX` of them.
    pub fn as_slice(&self) -> &[libc::iovec] {
        let rest = &self.iov[self.first..];
        &rest[..rest.len().min(1024)]
    }

    pub fn is_empty(&self) -> bool {
        self.first == self.iov.len()
    }

    /// Drops the first `n` bytes (after a short transfer).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.first += 1;
            } else {
                // SAFETY: moves the start forward within the same mapped,
                // bounds-checked buffer (n < iov_len).
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::GuestMemory;
    use vm_memory::GuestAddress;

    #[test]
    fn front_trimming() {
        let segs = vec![(0x1000, 4), (0x2000, 8)];
        assert_eq!(total_len(&segs), 12);
        assert_eq!(skip_front(&segs, 6), vec![(0x2002, 6)]);
        assert_eq!(take_front(&segs, 6), vec![(0x1000, 4), (0x2000, 2)]);
        assert!(skip_front(&segs, 99).is_empty());
    }

    #[test]
    fn buffers_outside_memory_are_refused_and_advance_trims() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mem = HostRam::new(&mem);
        assert!(IoVecs::new(&mem, &[(0x1000, 16), (0xfff8, 16)]).is_none());
        let mut v = IoVecs::new(&mem, &[(0x1000, 4), (0x2000, 0), (0x3000, 8)]).unwrap();
        assert_eq!(v.as_slice().len(), 2, "zero-length buffers left out");
        v.advance(6);
        assert_eq!(v.as_slice().len(), 1);
        assert_eq!(v.as_slice()[0].iov_len, 6);
        v.advance(6);
        assert!(v.is_empty());
    }

    #[test]
    fn only_device_writable_buffers_are_marked_dirty() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let dirty = |page: usize| mem.iter().next().unwrap().bitmap().dirty_at(page * 0x1000);
        let ram = HostRam::new(&mem);
        drop(IoVecs::new(&ram, &[(0x1000, 16)]).unwrap());
        assert!(!dirty(1), "a buffer the device only reads");
        drop(IoVecs::writable(&ram, &[(0x2ff0, 0x20)]).unwrap());
        assert!(dirty(2) && dirty(3), "both pages a buffer spans");
        assert!(!dirty(4));
    }

    #[test]
    fn bytes_across_buffers() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mem = HostRam::new(&mem);
        let segs = [(0x1000, 3), (0x2000, 5)];
        assert!(write_bytes(&mem, &segs, 2, b"abcd"));
        let mut b = [0u8; 6];
        assert!(read_bytes(&mem, &segs, &mut b));
        assert_eq!(&b[2..], b"abcd");
        assert!(!write_bytes(&mem, &segs, 6, b"xyz"), "past the end");
        assert!(
            !read_bytes(&mem, &segs, &mut [0u8; 9]),
            "more than they hold"
        );
        assert!(in_memory(&mem, &segs));
        assert!(!in_memory(&mem, &[(0xfff0, 32)]));
    }
}
