//! The memory file: guest RAM, region after region, nothing else. Full
//! snapshots leave all-zero pages as holes; Diff snapshots write only the
//! dirty pages into a sparse file of the full size; [`rebase`] merges a
//! Diff onto the file it follows. A restore maps the file `MAP_PRIVATE`,
//! so pages are read on first touch and the file is never written.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

use crate::vm::layout::MemoryLayout;
use crate::vm::GuestMemory;

/// Pages of the memory file, KVM's dirty log and the devices' bitmaps.
pub const PAGE: usize = crate::vm::DIRTY_PAGE;

/// What a memory file write did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    /// Bytes of guest RAM written (holes not counted).
    pub bytes: u64,
    /// The file's (apparent) size: all of guest RAM.
    pub file_len: u64,
}

/// Maps `file` as guest RAM laid out as `layout`, copy-on-write, with
/// dirty bitmaps when `track_dirty`.
pub fn map_file(
    file: &File,
    layout: &MemoryLayout,
    track_dirty: bool,
) -> std::io::Result<GuestMemory> {
    crate::vm::guest_ram(&layout.ranges(), track_dirty, Some(file)).map_err(std::io::Error::other)
}

/// Guest RAM as one byte slice per region, for reading.
fn region_bytes(r: &GuestRegionMmap<AtomicBitmap>) -> std::io::Result<&[u8]> {
    let host = r
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|e| std::io::Error::other(format!("guest RAM at {:#x}: {e}", r.start_addr().0)))?;
    // SAFETY: [host, host+len) is this region's mapping, alive while `r`
    // is borrowed; the vCPUs and the device thread are paused, so nothing
    // writes it meanwhile.
    Ok(unsafe { std::slice::from_raw_parts(host, r.len() as usize) })
}

/// How much is written between looks for a stop signal (~10 ms of I/O).
const SIGNAL_CHECK_BYTES: usize = 16 << 20;

fn is_zero(page: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits exactly.
        unsafe { page.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// Writes the pages `want(region, page)` selects, coalesced into runs, at
/// their offsets; the file is sized to all of RAM first (the rest holes).
fn write_pages(
    mem: &GuestMemory,
    file: &File,
    mut want: impl FnMut(usize, usize, &[u8]) -> bool,
) -> std::io::Result<Written> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(0)?;
    file.set_len(total)?;
    let mut out = Written {
        bytes: 0,
        file_len: total,
    };
    let mut base = 0u64;
    for (ri, r) in mem.iter().enumerate() {
        let bytes = region_bytes(r)?;
        let pages = bytes.len().div_ceil(PAGE);
        let mut run: Option<usize> = None;
        for p in 0..=pages {
            let take = p < pages && {
                let page = &bytes[p * PAGE..((p + 1) * PAGE).min(bytes.len())];
                want(ri, p, page)
            };
            match (take, run) {
                (true, None) => run = Some(p),
                (false, Some(start)) => {
                    let run_bytes = &bytes[start * PAGE..(p * PAGE).min(bytes.len())];
                    let mut at = base + (start * PAGE) as u64;
                    // In slices, each after a look for a stop signal: a
                    // multi-GiB write must not keep SIGTERM waiting.
                    for chunk in run_bytes.chunks(SIGNAL_CHECK_BYTES) {
                        if crate::signals::pending() {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::Interrupted,
                                "given up for a stop signal",
                            ));
                        }
                        file.write_all_at(chunk, at)?;
                        at += chunk.len() as u64;
                        out.bytes += chunk.len() as u64;
                    }
                    run = None;
                }
                _ => {}
            }
        }
        base += r.len();
    }
    Ok(out)
}

/// Which pages of `[host, host+len)` the process has in RAM or swap
/// (`/proc/self/pagemap` bits 63 and 62), so pages never touched are
/// skipped without being read (reading one would fault it in). `None`
/// when pagemap cannot be read.
fn populated(host: *const u8, len: usize) -> Option<Vec<bool>> {
    let pages = len.div_ceil(PAGE);
    let f = File::open("/proc/self/pagemap").ok()?;
    let mut raw = vec![0u8; pages * 8];
    f.read_exact_at(&mut raw, (host as u64 / PAGE as u64) * 8)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().unwrap_or_default()) >> 62 != 0)
            .collect(),
    )
}

/// All of guest RAM; zero pages stay holes. In anonymous RAM, pages the
/// guest never touched are known to be zero without being read.
pub fn write_full(mem: &GuestMemory, file: &File) -> std::io::Result<Written> {
    let maps: Vec<Option<Vec<bool>>> = mem
        .iter()
        .map(|r| {
            if r.file_offset().is_some() {
                return None; // untouched pages hold the file's data
            }
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            populated(host, r.len() as usize)
        })
        .collect();
    write_pages(mem, file, |r, p, page| {
        let touched = maps[r]
            .as_ref()
            .is_none_or(|m| m.get(p).copied().unwrap_or(true));
        touched && !is_zero(page)
    })
}

/// Only pages marked in `dirty[region]` (one bit per page, KVM's layout).
pub fn write_dirty(mem: &GuestMemory, file: &File, dirty: &[Vec<u64>]) -> std::io::Result<Written> {
    write_pages(mem, file, |r, p, _| {
        dirty
            .get(r)
            .and_then(|bits| bits.get(p / 64))
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    })
}

/// Pages the VMM itself wrote (vm-memory's bitmaps), KVM's layout; each
/// bitmap is cleared as it is read.
pub fn take_device_dirty(mem: &GuestMemory) -> Vec<Vec<u64>> {
    use vm_memory::bitmap::Bitmap;
    mem.iter()
        .map(|r| {
            let pages = (r.len() as usize).div_ceil(PAGE);
            let mut bits = vec![0u64; pages.div_ceil(64)];
            let bm: &AtomicBitmap = std::ops::Deref::deref(r).bitmap();
            for p in 0..pages {
                if bm.dirty_at(p * PAGE) {
                    bits[p / 64] |= 1 << (p % 64);
                }
            }
            bm.reset();
            bits
        })
        .collect()
}

/// Copies every data range of `diff` (a sparse Diff memory file) onto
/// `base` (the Full file it follows), as Firecracker's `snapshot-editor
/// edit-memory rebase` does. Returns the bytes copied.
pub fn rebase(base: &Path, diff: &Path) -> std::io::Result<u64> {
    let named = |p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let b = std::fs::OpenOptions::new()
        .write(true)
        .open(base)
        .map_err(|e| named(base, e))?;
    let d = File::open(diff).map_err(|e| named(diff, e))?;
    let (bl, dl) = (b.metadata()?.len(), d.metadata()?.len());
    if bl != dl {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is {dl} bytes and {} is {bl}: a Diff must follow a Full snapshot of the same machine",
                diff.display(),
                base.display()
            ),
        ));
    }
    let mut copied = 0u64;
    let mut at = 0i64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // SAFETY: lseek on an fd we own; no memory is involved.
        let start = unsafe { libc::lseek(d.as_raw_fd(), at, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data after `at`
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(d.as_raw_fd(), start, libc::SEEK_HOLE) };
        if end <= start {
            break;
        }
        let mut pos = start as u64;
        while pos < end as u64 {
            let n = buf.len().min((end as u64 - pos) as usize);
            d.read_exact_at(&mut buf[..n], pos)?;
            b.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            copied += n as u64;
        }
        at = end;
    }
    b.sync_all()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tsubame-mem-{}-{name}", std::process::id()))
    }

    fn data_bytes(f: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn full_then_diff_then_rebase_restores_every_page() {
        let layout = MemoryLayout::new(16).unwrap();
        let mem = GuestMemory::from_ranges(&layout.ranges()).unwrap();
        mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"second", GuestAddress(0x80_0000)).unwrap();
        let (full_p, diff_p) = (tmp("full"), tmp("diff"));
        let full = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&full_p)
            .unwrap();
        let w = write_full(&mem, &full).unwrap();
        assert_eq!(w.file_len, 16 << 20);
        assert_eq!(w.bytes, 2 * PAGE as u64, "zero pages are holes");
        assert!(data_bytes(&full) < 1 << 20, "the file is sparse");

        // Changes after the Full: one page rewritten, one page new.
        let _ = take_device_dirty(&mem);
        mem.write_slice(b"FIRST", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"third", GuestAddress(0x40_2000)).unwrap();
        let dirty = take_device_dirty(&mem);
        let diff = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&diff_p)
            .unwrap();
        let w = write_dirty(&mem, &diff, &dirty).unwrap();
        assert_eq!(w.bytes, 2 * PAGE as u64, "only the dirty pages");
        assert!(
            take_device_dirty(&mem).iter().flatten().all(|w| *w == 0),
            "cleared"
        );

        assert_eq!(rebase(&full_p, &diff_p).unwrap(), 2 * PAGE as u64);
        let restored = map_file(&File::open(&full_p).unwrap(), &layout, true).unwrap();
        let read = |a: u64, n: usize| {
            let mut b = vec![0u8; n];
            restored.read_slice(&mut b, GuestAddress(a)).unwrap();
            b
        };
        assert_eq!(read(0x1000, 5), b"FIRST");
        assert_eq!(read(0x80_0000, 6), b"second");
        assert_eq!(read(0x40_2000, 5), b"third");
        assert_eq!(read(0x30_0000, 4), [0; 4]);

        // Copy-on-write: the guest's writes never reach the file.
        restored
            .write_slice(b"guest", GuestAddress(0x1000))
            .unwrap();
        let again = map_file(&File::open(&full_p).unwrap(), &layout, true).unwrap();
        let mut b = [0u8; 5];
        again.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"FIRST");

        let other = tmp("other");
        std::fs::write(&other, [0u8; 4096]).unwrap();
        let e = rebase(&full_p, &other).unwrap_err().to_string();
        assert!(e.contains("same machine"), "{e}");
        for p in [full_p, diff_p, other] {
            let _ = std::fs::remove_file(p);
        }
    }
}
