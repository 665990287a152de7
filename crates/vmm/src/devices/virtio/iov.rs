//! A descriptor chain's buffers as host `iovec`s, so a device moves data
//! between guest memory and a file, tap or socket in one system call,
//! without a bounce buffer. Every buffer is checked against guest memory
//! when it is mapped.

use crate::vm::GuestMemory;
use std::marker::PhantomData;
use virtio_queue::DescriptorChain;
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

/// Guest buffers as (address, length).
pub type Segments = Vec<(u64, usize)>;

/// The chain's buffers, device-readable and device-writable apart; `None`
/// when a buffer runs past the end of the address space (found by
/// fuzzing: its end overflowed). Whether they lie in guest memory is
/// checked when they are mapped.
pub fn segments(chain: &DescriptorChain<&GuestMemory>) -> Option<(Segments, Segments)> {
    let (mut r, mut w) = (Vec::new(), Vec::new());
    for d in chain.clone() {
        d.addr().0.checked_add(u64::from(d.len()))?;
        let seg = (d.addr().0, d.len() as usize);
        if d.is_write_only() {
            w.push(seg);
        } else {
            r.push(seg);
        }
    }
    Some((r, w))
}

/// A chain the device only reads (a transmit buffer) holding a length in
/// `len`: its buffers. `None` for a device-writable buffer, a length out of
/// range, or a malformed chain.
pub fn device_readable(
    chain: &DescriptorChain<&GuestMemory>,
    len: std::ops::RangeInclusive<usize>,
) -> Option<Segments> {
    let (readable, writable) = segments(chain)?;
    (writable.is_empty() && len.contains(&total_len(&readable))).then_some(readable)
}

/// A chain the device only writes (a receive buffer) of at least `min`
/// bytes: its buffers. `None` for a device-readable buffer, too little
/// room, or a malformed chain.
pub fn device_writable(chain: &DescriptorChain<&GuestMemory>, min: usize) -> Option<Segments> {
    let (readable, writable) = segments(chain)?;
    (readable.is_empty() && total_len(&writable) >= min).then_some(writable)
}

pub fn total_len(segs: &[(u64, usize)]) -> usize {
    segs.iter().map(|s| s.1).sum()
}

/// `segs` without its first `n` bytes.
pub fn skip_front(segs: &[(u64, usize)], mut n: usize) -> Segments {
    let mut out = Vec::new();
    for &(addr, len) in segs {
        if n >= len {
            n -= len;
        } else {
            out.push((addr + n as u64, len - n));
            n = 0;
        }
    }
    out
}

/// The first `n` bytes of `segs`.
pub fn take_front(segs: &[(u64, usize)], mut n: usize) -> Segments {
    let mut out = Vec::new();
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
    out
}

/// Fills `buf` from the start of `segs`; false if they hold too little
/// or leave guest memory.
pub fn read_bytes(mem: &GuestMemory, segs: &[(u64, usize)], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for &(addr, len) in segs {
        if done == buf.len() {
            break;
        }
        let n = len.min(buf.len() - done);
        if mem
            .read_slice(&mut buf[done..done + n], GuestAddress(addr))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Writes `data` at byte `at` of `segs`; false if they hold too little or
/// leave guest memory.
pub fn write_bytes(
    mem: &GuestMemory,
    segs: &[(u64, usize)],
    mut at: usize,
    mut data: &[u8],
) -> bool {
    for &(addr, len) in segs {
        if data.is_empty() {
            break;
        }
        if at >= len {
            at -= len;
            continue;
        }
        let n = (len - at).min(data.len());
        if mem
            .write_slice(&data[..n], GuestAddress(addr + at as u64))
            .is_err()
        {
            return false;
        }
        data = &data[n..];
        at = 0;
    }
    data.is_empty()
}

/// Every buffer lies inside guest memory.
pub fn in_memory(mem: &GuestMemory, segs: &[(u64, usize)]) -> bool {
    segs.iter()
        .all(|&(a, l)| l == 0 || mem.get_slice(GuestAddress(a), l).is_ok())
}

/// Mapped guest buffers, valid while the guest memory they came from is
/// borrowed.
pub struct IoVecs<'m> {
    iov: Vec<libc::iovec>,
    /// Index of the first iovec not yet consumed (see `advance`).
    first: usize,
    _guards: Vec<PtrGuardMut>,
    _mem: PhantomData<&'m GuestMemory>,
}

impl<'m> IoVecs<'m> {
    /// Maps `segs` for the device to read; `None` when any buffer leaves
    /// guest memory. Zero-length buffers are left out.
    pub fn new(mem: &'m GuestMemory, segs: &[(u64, usize)]) -> Option<IoVecs<'m>> {
        Self::map(mem, segs, false)
    }

    /// Maps `segs` for the device to write. Writes through raw iovecs
    /// bypass vm-memory, so their pages are marked dirty here (for Diff
    /// snapshots).
    pub fn writable(mem: &'m GuestMemory, segs: &[(u64, usize)]) -> Option<IoVecs<'m>> {
        Self::map(mem, segs, true)
    }

    fn map(mem: &'m GuestMemory, segs: &[(u64, usize)], dirty: bool) -> Option<IoVecs<'m>> {
        use vm_memory::bitmap::Bitmap;
        let mut guards = Vec::with_capacity(segs.len());
        let mut iov = Vec::with_capacity(segs.len());
        for &(addr, len) in segs {
            if len == 0 {
                continue;
            }
            // One slice per buffer: RAM ranges are never adjacent, so a
            // buffer that leaves its region is invalid anyway.
            let slice = mem.get_slice(GuestAddress(addr), len).ok()?;
            if dirty {
                slice.bitmap().mark_dirty(0, len);
            }
            let guard = slice.ptr_guard_mut();
            iov.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: len,
            });
            guards.push(guard);
        }
        Some(IoVecs {
            iov,
            first: 0,
            _guards: guards,
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
        drop(IoVecs::new(&mem, &[(0x1000, 16)]).unwrap());
        assert!(!dirty(1), "a buffer the device only reads");
        drop(IoVecs::writable(&mem, &[(0x2ff0, 0x20)]).unwrap());
        assert!(dirty(2) && dirty(3), "both pages a buffer spans");
        assert!(!dirty(4));
    }

    #[test]
    fn bytes_across_buffers() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
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
