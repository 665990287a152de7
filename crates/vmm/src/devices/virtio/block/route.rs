//! Where a read goes on a disk with the batched engine. A read the host's
//! page cache can answer costs less as a `pread` than as an io_uring op
//! (4 KiB random reads from the cache: 0.90 of plain `pread` through the
//! ring against 0.96 synchronously, `bench blk`), while reads that wait
//! for the disk must run side by side (5x the reads per second). So a
//! read goes by what the cache answered lately:
//! - warm: a plain `pread`, as with the synchronous engine; one read in
//!   `PROBE_EVERY` asks the cache alone (`RWF_NOWAIT`), and a miss
//!   turns the route cold;
//! - cold: every read asks the cache alone first; a hit is done, a miss
//!   (which has started the disk read) goes to the ring. `WARM_AFTER`
//!   hits in a row turn the route warm.
//!
//! Reads that miss while the route is warm wait one after another, as
//! on the synchronous engine, until the next probe.

use super::super::ram::HostRam;
use super::io::{read_cached, transfer, Cached};
use super::Fault;
use std::fs::File;

/// One warm read in this many asks the cache alone (a `preadv2` costs
/// ~40 ns more than a `pread` here).
const PROBE_EVERY: u32 = 16;
/// Hits in a row that turn a cold route warm.
const WARM_AFTER: u32 = 64;

/// How a read went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// It is done: the data is in the guest's buffers.
    Done,
    /// Not done: it is for the ring.
    Ring,
}

pub(super) struct ReadRoute {
    warm: bool,
    /// Whether the image's file system takes `RWF_NOWAIT` reads; without
    /// them the route stays cold and every read goes to the ring.
    nowait: bool,
    /// Warm reads since the last probe, or hits in a row while cold.
    count: u32,
}

impl ReadRoute {
    pub fn new() -> ReadRoute {
        ReadRoute {
            warm: false,
            nowait: true,
            count: 0,
        }
    }

    /// Every read to the ring, as on a file system without `RWF_NOWAIT`.
    pub fn ring_only() -> ReadRoute {
        ReadRoute {
            nowait: false,
            ..ReadRoute::new()
        }
    }

    /// Reads `segs` at `offset` now, or leaves it for the ring. A read
    /// left for the ring may have written part of its buffers, which the
    /// ring's op writes again.
    pub fn read(
        &mut self,
        file: &File,
        ram: &HostRam,
        segs: &[(u64, usize)],
        offset: u64,
    ) -> Result<Way, Fault> {
        if self.warm {
            self.count += 1;
            if self.count < PROBE_EVERY {
                transfer(file, ram, segs, offset, false)?;
                return Ok(Way::Done);
            }
            self.count = 0;
        }
        if !self.nowait {
            return Ok(Way::Ring);
        }
        match read_cached(file, ram, segs, offset) {
            Cached::All => {
                if !self.warm {
                    self.count += 1;
                    if self.count >= WARM_AFTER {
                        (self.warm, self.count) = (true, 0);
                    }
                }
                Ok(Way::Done)
            }
            Cached::Not => {
                (self.warm, self.count) = (false, 0);
                Ok(Way::Ring)
            }
            Cached::Unsupported => {
                log::info!("virtio-blk: the image's file system takes no RWF_NOWAIT reads: every read goes through io_uring");
                (self.warm, self.count, self.nowait) = (false, 0, false);
                Ok(Way::Ring)
            }
        }
    }
}

/// Drops `file`'s pages from the page cache (written back first, so that
/// they can go); false where this host keeps them anyway (tmpfs).
#[cfg(test)]
pub(super) fn drop_cache(file: &File, probe: u64) -> bool {
    use std::os::fd::AsRawFd;
    file.sync_all().unwrap();
    // SAFETY: a hint on a descriptor the caller owns.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    let mut b = [0u8; 512];
    let v = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    };
    // SAFETY: one iovec on the local buffer.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &v, 1, probe as i64, libc::RWF_NOWAIT) };
    if n == b.len() as isize {
        eprintln!("this host keeps the image in its page cache after POSIX_FADV_DONTNEED: skipped");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    fn image(name: &str, len: u64) -> (std::path::PathBuf, File, Vec<u8>) {
        let path =
            std::env::temp_dir().join(format!("tsubame-route-{name}-{}", std::process::id()));
        let data: Vec<u8> = (0..len).map(|i| (i / 4096 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (path.clone(), File::open(&path).unwrap(), data)
    }

    /// Hits turn the route warm; once the image leaves the page cache,
    /// the next probe misses and turns it cold again, and every read the
    /// route did meanwhile has the image's bytes.
    #[test]
    fn the_route_follows_the_page_cache() {
        let (path, file, data) = image("follow", 17 * MIB);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
        let ram = HostRam::new(&mem);
        let mut route = ReadRoute::new();
        let read = |route: &mut ReadRoute, off: u64| {
            mem.write_slice(&[0u8; 4096], GuestAddress(0x1000)).unwrap();
            let way = route.read(&file, &ram, &[(0x1000, 4096)], off).unwrap();
            let mut got = vec![0u8; 4096];
            mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
            if way == Way::Done {
                assert_eq!(got, data[off as usize..off as usize + 4096], "at {off}");
            }
            way
        };
        for i in 0..u64::from(WARM_AFTER) {
            assert!(!route.warm, "warm after {i} hits");
            assert_eq!(read(&mut route, i % 16 * 4096), Way::Done);
        }
        assert!(route.warm);
        // A MiB apart: the readahead of one miss brings in no other block.
        if !drop_cache(&file, 16 * MIB) {
            return;
        }
        let ways: Vec<Way> = (0..u64::from(PROBE_EVERY))
            .map(|i| read(&mut route, i * MIB))
            .collect();
        assert_eq!(ways.iter().filter(|w| **w == Way::Ring).count(), 1);
        assert_eq!(ways.last(), Some(&Way::Ring), "the probe missed");
        assert!(!route.warm);
        let _ = std::fs::remove_file(path);
    }

    /// A file that takes no `RWF_NOWAIT` reads (procfs): every read goes
    /// to the ring, and the cache is not asked again.
    #[test]
    fn without_nowait_reads_everything_goes_to_the_ring() {
        let file = File::open("/proc/self/stat").unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let ram = HostRam::new(&mem);
        let mut route = ReadRoute::new();
        for _ in 0..WARM_AFTER + 1 {
            assert_eq!(route.read(&file, &ram, &[(0, 64)], 0).unwrap(), Way::Ring);
            assert!(!route.nowait && !route.warm);
        }
    }
}
