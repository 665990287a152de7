//! virtio-blk on a raw image file (virtio 1.2, 5.2).
//!
//! Requests are parsed from the chain's readable and writable bytes, never
//! from its descriptor layout: a header split across descriptors, or data
//! and status in one descriptor, work like any other legal chain. Every
//! sector range is checked against the image before the file is touched.

use super::chain::Chain;
use super::iov::{read_bytes, skip_front_into, take_front_into, total_len, write_bytes, IoVecs};
use super::ram::HostRam;
use super::{
    drain_queue, read_config_bytes, DeviceState, Used, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use crate::devices::virtio::mmio::RING_EVENT_IDX;
use crate::vm::GuestMemory;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use virtio_queue::Queue;
use vm_memory::ByteValued;

pub const SECTOR_SIZE: u64 = 512;
const SECTOR_SHIFT: u32 = 9;
pub const QUEUE_SIZE: u16 = 256;

pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Largest data transfer of one request; bounds the bounce buffer.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest discard / write-zeroes range, in sectors.
const MAX_RANGE_SECTORS: u32 = 1 << 16;
const MAX_RANGE_SEGMENTS: u32 = 1;

/// `struct virtio_blk_outhdr`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8 bytes, 8-aligned).
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}
// SAFETY: plain integers, no padding (8 + 4 + 4 bytes, 8-aligned).
unsafe impl ByteValued for Segment {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] super::image::Error),
    #[error("disk image {path}: size {size} is not a multiple of 512 bytes")]
    Size { path: String, size: u64 },
}

/// Why a request failed: the status the driver sees.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// Malformed or out-of-range request, or a host I/O error.
    Io,
    Unsupported,
}

/// What a disk has done, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    /// Requests answered with an I/O error or as unsupported.
    pub errors: u64,
    /// Chains that could carry no status at all.
    pub malformed: u64,
}

/// What a snapshot records of a disk: the image is not copied, so a
/// restore checks it is still the image the guest knew.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    pub sectors: u64,
    pub read_only: bool,
    /// (st_dev, st_ino) at snapshot time.
    pub identity: (u64, u64),
}

pub struct Block {
    counters: BlockCounters,
    file: File,
    /// Image size in sectors, fixed at open.
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    features: u64,
    config: Vec<u8>,
    /// A request's data buffers (header and status trimmed off), kept
    /// from request to request.
    data_out: Vec<(u64, usize)>,
    data_in: Vec<(u64, usize)>,
}

impl Block {
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Block, Error> {
        let name = path.display().to_string();
        let super::image::Image { file, size } = super::image::open(path, read_only)?;
        if size % SECTOR_SIZE != 0 {
            return Err(Error::Size { path: name, size });
        }
        let id_text = id.map(str::to_owned).unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Block::with_file(
            file,
            size / SECTOR_SIZE,
            read_only,
            &id_text,
        ))
    }

    pub fn with_file(file: File, sectors: u64, read_only: bool, id_text: &str) -> Block {
        let mut id = [0u8; ID_BYTES];
        let n = id_text.len().min(ID_BYTES);
        id[..n].copy_from_slice(&id_text.as_bytes()[..n]);
        let mut features =
            VIRTIO_F_VERSION_1 | RING_EVENT_IDX | F_FLUSH | F_DISCARD | F_WRITE_ZEROES;
        if read_only {
            features |= F_RO;
        }
        Block {
            counters: BlockCounters::default(),
            file,
            sectors,
            read_only,
            id,
            features,
            config: config_space(sectors),
            data_out: Vec::new(),
            data_in: Vec::new(),
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Byte range of `count` bytes at `sector`, if it lies inside the image.
    fn range(&self, sector: u64, count: u64) -> Result<u64, Fault> {
        let start = sector.checked_mul(SECTOR_SIZE).ok_or(Fault::Io)?;
        let end = start.checked_add(count).ok_or(Fault::Io)?;
        if end > self.sectors * SECTOR_SIZE {
            return Err(Fault::Io);
        }
        Ok(start)
    }

    /// Executes one request. Returns the status and how many bytes were
    /// written into the driver's buffers before the status byte.
    fn execute(
        &mut self,
        header: RequestHeader,
        ram: &HostRam,
        io: ChainIo<'_>,
    ) -> Result<u32, Fault> {
        let ChainIo { data_out, data_in } = io;
        match header.request_type {
            // Data moves straight between the file and guest memory
            // (preadv/pwritev on the chain's buffers): no bounce buffer.
            T_IN => {
                let len = total_len(data_in);
                if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
                    return Err(Fault::Io);
                }
                let offset = self.range(header.sector, len as u64)?;
                transfer(&self.file, ram, data_in, offset, false)?;
                self.counters.reads += 1;
                self.counters.read_bytes += len as u64;
                Ok(len as u32)
            }
            T_OUT => {
                if self.read_only {
                    return Err(Fault::Io);
                }
                let len = total_len(data_out);
                if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
                    return Err(Fault::Io);
                }
                let offset = self.range(header.sector, len as u64)?;
                transfer(&self.file, ram, data_out, offset, true)?;
                self.counters.writes += 1;
                self.counters.write_bytes += len as u64;
                Ok(0)
            }
            T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| Fault::Io)?;
                }
                self.counters.flushes += 1;
                Ok(0)
            }
            T_GET_ID => {
                scatter(ram, data_in, &self.id)?;
                Ok(ID_BYTES as u32)
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.read_only {
                    return Err(Fault::Io);
                }
                let zeroes = header.request_type == T_WRITE_ZEROES;
                let segments = total_len(data_out) / std::mem::size_of::<Segment>();
                if segments == 0 || segments > MAX_RANGE_SEGMENTS as usize {
                    return Err(Fault::Io);
                }
                let mut seg = Segment::default();
                gather(ram, data_out, seg.as_mut_slice())?;
                // Only bit 0 (unmap, write-zeroes only) is defined.
                if seg.flags & !1 != 0 || (!zeroes && seg.flags != 0) {
                    return Err(Fault::Unsupported);
                }
                if seg.num_sectors > MAX_RANGE_SECTORS {
                    return Err(Fault::Io);
                }
                let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
                let offset = self.range(seg.sector, len)?;
                punch_or_zero(&self.file, offset, len, zeroes).map_err(|_| Fault::Io)?;
                self.counters.discards += 1;
                Ok(0)
            }
            _ => Err(Fault::Unsupported),
        }
    }

    /// Handles one chain; returns the used length: data written plus the
    /// status byte, or 0 when the chain cannot carry a status (dropped).
    fn handle_chain(&mut self, chain: &Chain, ram: &HostRam) -> u32 {
        let Some((readable, writable)) = chain.buffers() else {
            self.counters.malformed += 1;
            return 0;
        };
        // The status is the chain's last writable byte, wherever it sits;
        // with no writable byte there is nowhere to answer: dropped.
        let Some(&(last, last_len)) = writable.iter().rev().find(|s| s.1 > 0) else {
            self.counters.malformed += 1;
            return 0;
        };
        let status_addr = last + last_len as u64 - 1;
        let writable_len = total_len(writable);
        let mut header = RequestHeader::default();
        let mut data_out = std::mem::take(&mut self.data_out);
        let mut data_in = std::mem::take(&mut self.data_in);
        let result = match gather(ram, readable, header.as_mut_slice()) {
            Ok(()) => {
                skip_front_into(
                    readable,
                    std::mem::size_of::<RequestHeader>(),
                    &mut data_out,
                );
                take_front_into(writable, writable_len - 1, &mut data_in);
                let io = ChainIo {
                    data_out: &data_out,
                    data_in: &data_in,
                };
                self.execute(header, ram, io)
            }
            Err(f) => Err(f),
        };
        (self.data_out, self.data_in) = (data_out, data_in);
        let (code, written) = match result {
            Ok(n) => (S_OK, n),
            Err(Fault::Io) => (S_IOERR, 0),
            Err(Fault::Unsupported) => (S_UNSUPP, 0),
        };
        if code != S_OK {
            self.counters.errors += 1;
        }
        if !ram.write(status_addr, &[code]) {
            self.counters.malformed += 1;
            return 0;
        }
        written + 1
    }
}

/// What a request sees of its chain: (address, length) pieces of the
/// data, the readable ones after the header and the writable ones before
/// the status.
struct ChainIo<'r> {
    data_out: &'r [(u64, usize)],
    data_in: &'r [(u64, usize)],
}

/// Fills `buf` from the start of `segs`.
fn gather(ram: &HostRam, segs: &[(u64, usize)], buf: &mut [u8]) -> Result<(), Fault> {
    read_bytes(ram, segs, buf).then_some(()).ok_or(Fault::Io)
}

/// Writes `data` over the start of `segs`.
fn scatter(ram: &HostRam, segs: &[(u64, usize)], data: &[u8]) -> Result<(), Fault> {
    write_bytes(ram, segs, 0, data)
        .then_some(())
        .ok_or(Fault::Io)
}

/// preadv (`write == false`: file into guest memory) or pwritev of the
/// whole of `segs` at `offset`, resuming after short transfers.
fn transfer(
    file: &File,
    ram: &HostRam,
    segs: &[(u64, usize)],
    offset: u64,
    write: bool,
) -> Result<(), Fault> {
    use std::os::fd::AsRawFd;
    if let [(addr, len)] = segs {
        return transfer_one(file, ram, *addr, *len, offset, write);
    }
    let iov = match write {
        true => IoVecs::new(ram, segs),
        false => IoVecs::writable(ram, segs),
    };
    let mut iov = iov.ok_or(Fault::Io)?;
    let mut done = 0usize;
    while !iov.is_empty() {
        let at = i64::try_from(offset + done as u64).map_err(|_| Fault::Io)?;
        let v = iov.as_slice();
        // SAFETY: every iovec points into guest memory that `iov` keeps
        // mapped and bounds-checked; the kernel touches only those bytes.
        let n = unsafe {
            match write {
                true => libc::pwritev(file.as_raw_fd(), v.as_ptr(), v.len() as i32, at),
                false => libc::preadv(file.as_raw_fd(), v.as_ptr(), v.len() as i32, at),
            }
        };
        let Some(n) = progress(n)? else {
            continue;
        };
        done += n;
        iov.advance(n);
    }
    Ok(())
}

/// What a `pread`/`pwrite` returned `n` means for a transfer: bytes
/// moved, `None` to retry (interrupted), or a failure (an error, or the
/// end of the file inside the disk's size).
fn progress(n: isize) -> Result<Option<usize>, Fault> {
    match n {
        n if n > 0 => Ok(Some(n as usize)),
        0 => Err(Fault::Io),
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(Fault::Io),
    }
}

/// `transfer` of one buffer (the usual request): the guest range mapped
/// once and `pread`/`pwrite` straight into it, without the iovec list a
/// chain of several needs (a tenth of the device's own time per 4 KiB
/// read went to building and advancing it).
fn transfer_one(
    file: &File,
    ram: &HostRam,
    addr: u64,
    len: usize,
    offset: u64,
    write: bool,
) -> Result<(), Fault> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let base = match write {
        true => ram.host_ptr(addr, len),
        false => ram.host_ptr_for_write(addr, len),
    }
    .ok_or(Fault::Io)?;
    let fd = file.as_raw_fd();
    let mut done = 0usize;
    while done < len {
        let at = i64::try_from(offset + done as u64).map_err(|_| Fault::Io)?;
        // SAFETY: [base, base + len) is guest memory that `ram` keeps
        // mapped and checked (host_ptr); the kernel touches only the
        // len - done bytes from base + done.
        let n = unsafe {
            let p = base.add(done).cast();
            match write {
                true => libc::pwrite(fd, p, len - done, at),
                false => libc::pread(fd, p, len - done, at),
            }
        };
        let Some(n) = progress(n)? else {
            continue;
        };
        done += n;
    }
    Ok(())
}

/// Discard punches a hole (the image stays the same size); write-zeroes
/// must read back as zeros, which a punched hole also guarantees.
fn punch_or_zero(file: &File, offset: u64, len: u64, zeroes: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a file descriptor we own, with a checked range;
    // it touches no memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    if !zeroes {
        // Discard is a hint: a file system that cannot punch holes may ignore it.
        return Ok(());
    }
    let zero = vec![0u8; len as usize];
    file.write_all_at(&zero, offset)
}

/// `struct virtio_blk_config` up to the write-zeroes fields.
fn config_space(sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&sectors.to_le_bytes());
    // max_discard_sectors, max_discard_seg, discard_sector_alignment.
    c[36..40].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&1u32.to_le_bytes());
    // max_write_zeroes_sectors, max_write_zeroes_seg, write_zeroes_may_unmap.
    c[48..52].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_RANGE_SEGMENTS.to_le_bytes());
    c[56] = 1;
    c
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn save(&mut self) -> Result<DeviceState, String> {
        use std::os::unix::fs::MetadataExt;
        // Every request completed before the pause; what the guest wrote
        // reaches the image before the snapshot says it did.
        if !self.read_only {
            self.file
                .sync_data()
                .map_err(|e| format!("virtio-blk: flushing the image: {e}"))?;
        }
        let m = self
            .file
            .metadata()
            .map_err(|e| format!("virtio-blk: {e}"))?;
        Ok(DeviceState::Block(BlockState {
            sectors: self.sectors,
            read_only: self.read_only,
            identity: (m.dev(), m.ino()),
        }))
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let DeviceState::Block(s) = state else {
            return Err(format!("virtio-blk: the snapshot has {state:?} here"));
        };
        if s.sectors != self.sectors {
            return Err(format!(
                "disk image changed size since the snapshot: {} bytes then, {} now",
                s.sectors * SECTOR_SIZE,
                self.sectors * SECTOR_SIZE
            ));
        }
        if s.read_only != self.read_only {
            return Err(format!(
                "disk was read-only={} at the snapshot, read-only={} now",
                s.read_only, self.read_only
            ));
        }
        if let Ok(m) = self.file.metadata() {
            if (m.dev(), m.ino()) != s.identity {
                // A copied image (another host) is legitimate; said once.
                log::warn!(
                    "virtio-blk: the image is not the same file as at the snapshot (a copy?)"
                );
            }
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.counters;
        vec![
            ("reads", c.reads),
            ("read_bytes", c.read_bytes),
            ("writes", c.writes),
            ("write_bytes", c.write_bytes),
            ("flushes", c.flushes),
            ("discards", c.discards),
            ("errors", c.errors),
            ("malformed", c.malformed),
        ]
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let Some(queue) = queues.get_mut(index) else {
            return Used::NONE;
        };
        drain_queue(index, queue, mem, |chain, ram| {
            self.handle_chain(chain, ram)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    struct Rig {
        mem: GuestMemory,
        dev: Block,
        image: std::path::PathBuf,
    }

    fn rig(sectors: u64, read_only: bool) -> Rig {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tsubame-blk-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let pattern: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&image, &pattern).unwrap();
        let dev = Block::open(&image, read_only, Some("tsubame-test-disk")).unwrap();
        Rig { mem, dev, image }
    }

    /// A descriptor: (address, length, device-writable).
    type D = (u64, u32, bool);

    /// Puts `descs` on a fresh queue as one chain, runs the device, and
    /// returns the used length (None: nothing was used).
    fn run(rig: &mut Rig, descs: &[D]) -> Option<u32> {
        let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x10_0000), 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (i + 1) as u16))
            })
            .collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        rig.dev
            .process_queue(0, std::slice::from_mut(&mut q), &rig.mem);
        let used_idx: u16 = rig.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        if used_idx == 0 {
            return None;
        }
        let len: u32 = rig.mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        Some(len)
    }

    fn header(rig: &Rig, at: u64, t: u32, sector: u64) {
        rig.mem
            .write_obj(
                RequestHeader {
                    request_type: t,
                    reserved: 0,
                    sector,
                },
                GuestAddress(at),
            )
            .unwrap();
    }

    fn status(rig: &Rig, at: u64) -> u8 {
        rig.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn image(rig: &Rig) -> Vec<u8> {
        std::fs::read(&rig.image).unwrap()
    }

    const H: u64 = 0x1000; // header
    const DATA: u64 = 0x2000;
    const ST: u64 = 0x9000; // status

    #[test]
    fn read_in_the_usual_three_descriptors() {
        let mut r = rig(16, false);
        header(&r, H, T_IN, 2);
        let used = run(&mut r, &[(H, 16, false), (DATA, 1024, true), (ST, 1, true)]);
        assert_eq!(used, Some(1025));
        assert_eq!(status(&r, ST), S_OK);
        let mut got = vec![0u8; 1024];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, image(&r)[1024..2048]);
    }

    /// A read fills guest memory behind vm-memory's back, so it marks the
    /// pages it filled dirty (a Diff snapshot must carry them), and only
    /// those: one buffer (pread) and two (preadv).
    #[test]
    fn reads_mark_the_pages_they_fill_dirty() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::GuestMemoryBackend;
        let dirty = |r: &Rig, at: u64| r.mem.iter().next().unwrap().bitmap().dirty_at(at as usize);
        let mut r = rig(16, false);
        header(&r, H, T_IN, 0);
        assert!(!dirty(&r, DATA) && !dirty(&r, DATA + 0x1000));
        let used = run(&mut r, &[(H, 16, false), (DATA, 4096, true), (ST, 1, true)]);
        assert_eq!(used, Some(4097));
        assert!(dirty(&r, DATA), "the buffer's page");
        assert!(!dirty(&r, DATA + 0x1000), "the page past it");
        let mut r = rig(16, false);
        header(&r, H, T_IN, 0);
        let two = [
            (H, 16, false),
            (DATA, 512, true),
            (0x5000, 512, true),
            (ST, 1, true),
        ];
        assert_eq!(run(&mut r, &two), Some(1025));
        assert!(dirty(&r, DATA) && dirty(&r, 0x5000) && !dirty(&r, 0x4000));
    }

    #[test]
    fn read_with_header_split_and_data_sharing_the_status_descriptor() {
        let mut r = rig(16, false);
        header(&r, H, T_IN, 1);
        // Header over two descriptors; data and status in one writable one.
        let used = run(
            &mut r,
            &[(H, 5, false), (H + 5, 11, false), (DATA, 513, true)],
        );
        assert_eq!(used, Some(513));
        assert_eq!(status(&r, DATA + 512), S_OK);
        let mut got = vec![0u8; 512];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, image(&r)[512..1024]);
    }

    #[test]
    fn write_then_flush_reach_the_file() {
        let mut r = rig(16, false);
        header(&r, H, T_OUT, 3);
        // Header and data in one readable descriptor.
        r.mem
            .write_slice(&[0xab; 512], GuestAddress(H + 16))
            .unwrap();
        let used = run(&mut r, &[(H, 16 + 512, false), (ST, 1, true)]);
        assert_eq!(used, Some(1));
        assert_eq!(status(&r, ST), S_OK);
        assert_eq!(&image(&r)[1536..2048], &[0xab; 512][..]);
        header(&r, H, T_FLUSH, 0);
        assert_eq!(run(&mut r, &[(H, 16, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_OK);
    }

    #[test]
    fn get_id() {
        let mut r = rig(8, false);
        header(&r, H, T_GET_ID, 0);
        let used = run(&mut r, &[(H, 16, false), (DATA, 20, true), (ST, 1, true)]);
        assert_eq!(used, Some(21));
        let mut got = [0u8; 20];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got[..17], b"tsubame-test-disk");
        assert_eq!(status(&r, ST), S_OK);
    }

    #[test]
    fn write_zeroes_and_discard() {
        let mut r = rig(16, false);
        header(&r, H, T_WRITE_ZEROES, 0);
        let seg = Segment {
            sector: 4,
            num_sectors: 2,
            flags: 0,
        };
        r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
        assert_eq!(run(&mut r, &[(H, 32, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_OK);
        let img = image(&r);
        assert!(img[2048..3072].iter().all(|&b| b == 0));
        assert_ne!(img[3072], 0, "only the range is zeroed");
        assert_eq!(img.len(), 16 * 512, "the image keeps its size");

        header(&r, H, T_DISCARD, 0);
        let seg = Segment {
            sector: 8,
            num_sectors: 8,
            flags: 0,
        };
        r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
        assert_eq!(run(&mut r, &[(H, 32, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_OK);
        // Unknown flags are unsupported.
        let seg = Segment {
            sector: 0,
            num_sectors: 1,
            flags: 2,
        };
        r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
        header(&r, H, T_WRITE_ZEROES, 0);
        run(&mut r, &[(H, 32, false), (ST, 1, true)]);
        assert_eq!(status(&r, ST), S_UNSUPP);
    }

    #[test]
    fn out_of_range_sectors_fail_without_touching_the_file() {
        let mut r = rig(8, false);
        let before = image(&r);
        for sector in [7u64, 8, u64::MAX / 512, u64::MAX] {
            header(&r, H, T_OUT, sector);
            run(
                &mut r,
                &[(H, 16, false), (DATA, 1024, false), (ST, 1, true)],
            );
            assert_eq!(status(&r, ST), S_IOERR, "sector {sector}");
            header(&r, H, T_IN, sector);
            run(&mut r, &[(H, 16, false), (DATA, 1024, true), (ST, 1, true)]);
            assert_eq!(status(&r, ST), S_IOERR, "sector {sector}");
        }
        // Data not a whole number of sectors.
        header(&r, H, T_OUT, 0);
        run(&mut r, &[(H, 16, false), (DATA, 100, false), (ST, 1, true)]);
        assert_eq!(status(&r, ST), S_IOERR);
        assert_eq!(image(&r), before);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mut r = rig(8, true);
        assert_ne!(r.dev.features() & F_RO, 0);
        let before = image(&r);
        for t in [T_OUT, T_WRITE_ZEROES, T_DISCARD] {
            header(&r, H, t, 0);
            r.mem
                .write_obj(
                    Segment {
                        sector: 0,
                        num_sectors: 1,
                        flags: 0,
                    },
                    GuestAddress(DATA),
                )
                .unwrap();
            run(&mut r, &[(H, 16, false), (DATA, 512, false), (ST, 1, true)]);
            assert_eq!(status(&r, ST), S_IOERR, "type {t}");
        }
        assert_eq!(image(&r), before);
    }

    #[test]
    fn unknown_type_is_unsupported() {
        let mut r = rig(8, false);
        header(&r, H, 99, 0);
        run(&mut r, &[(H, 16, false), (ST, 1, true)]);
        assert_eq!(status(&r, ST), S_UNSUPP);
    }

    #[test]
    fn malformed_chains_get_an_error_or_are_dropped() {
        let mut r = rig(8, false);
        // Short header.
        header(&r, H, T_IN, 0);
        r.mem.write_obj(0x55u8, GuestAddress(ST)).unwrap();
        assert_eq!(run(&mut r, &[(H, 8, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_IOERR);
        // Status byte only in a read-only descriptor: nowhere to answer.
        r.mem.write_obj(0x55u8, GuestAddress(ST)).unwrap();
        assert_eq!(run(&mut r, &[(H, 16, false), (ST, 1, false)]), Some(0));
        assert_eq!(status(&r, ST), 0x55, "a read-only byte is never written");
        // Data buffers outside guest memory: an I/O error, nothing written
        // anywhere else.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(
                &mut r,
                &[(H, 16, false), (0xffff_0000_0000, 512, true), (ST, 1, true)]
            ),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_IOERR);
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(
                &mut r,
                &[(H, 16, false), (0x00ff_ff00, 0x1000, true), (ST, 1, true)]
            ),
            Some(1),
            "crosses the end of guest memory"
        );
        assert_eq!(status(&r, ST), S_IOERR);
        // A header outside guest memory: I/O error too.
        assert_eq!(
            run(&mut r, &[(0xffff_0000_0000, 16, false), (ST, 1, true)]),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_IOERR);
        // A status byte outside guest memory: dropped.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(&mut r, &[(H, 16, false), (0xffff_0000_0000, 1, true)]),
            Some(0)
        );
        // Zero-length descriptors contribute nothing.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(&mut r, &[(H, 16, false), (DATA, 0, true), (ST, 1, true)]),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_OK);
        // Over-long data.
        header(&r, H, T_IN, 0);
        run(
            &mut r,
            &[
                (H, 16, false),
                (DATA, (MAX_REQUEST_BYTES + 512) as u32, true),
                (ST, 1, true),
            ],
        );
        assert_eq!(status(&r, ST), S_IOERR);
    }

    #[test]
    fn descriptor_loops_and_over_long_chains_end() {
        let mut r = rig(8, false);
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x10_0000), 16);
        // Two descriptors pointing at each other.
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(H, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(ST, 1, WRITE | NEXT, 0)),
        ];
        for (i, d) in raw.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        header(&r, H, T_IN, 0);
        r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
        // Next index past the table: the chain is cut, never followed.
        let raw = [RawDescriptor::from(SplitDescriptor::new(H, 16, NEXT, 200))];
        vq.desc_table().store(0, raw[0]).unwrap();
        vq.avail().idx().store(2);
        vq.avail().ring().ref_at(1).unwrap().store(0);
        r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
    }

    #[test]
    fn a_buffer_past_the_end_of_the_address_space_is_dropped() {
        // Found by the blk_request fuzz target: the end of the status
        // buffer overflowed.
        let mut r = rig(8, false);
        header(&r, 0x1000, T_IN, 0);
        let used = run(&mut r, &[(0x1000, 16, false), (u64::MAX - 7, 16, true)]);
        assert_eq!(used, Some(0));
    }

    #[test]
    fn a_corrupt_available_index_does_not_spin_the_device() {
        // Found by the blk_request fuzz target: an index far ahead of the
        // ring made every pop fail while "more" stayed true.
        let mut r = rig(8, false);
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x10_0000), 16);
        vq.avail().idx().store(0x0202);
        let mut q: Queue = vq.create_queue().unwrap();
        let used = r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
        assert!(!used.any());
    }

    #[test]
    fn odd_sized_images_are_refused() {
        let dir = std::env::temp_dir().join(format!("tsubame-blk-odd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("odd.img");
        std::fs::write(&p, [0u8; 1000]).unwrap();
        let e = Block::open(&p, false, None).err().unwrap().to_string();
        assert!(e.contains("odd.img") && e.contains("512"), "{e}");
        let e = Block::open(&dir.join("missing.img"), false, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.img"), "{e}");
    }

    #[test]
    fn config_space_reports_capacity() {
        let r = rig(24, false);
        let mut cap = [0u8; 8];
        r.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 24);
    }

    #[test]
    fn counters_follow_the_requests() {
        let mut r = rig(8, false);
        header(&r, H, T_IN, 0);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 1024, true), (0x3000, 1, true)],
        );
        header(&r, H, T_OUT, 2);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 512, false), (0x3000, 1, true)],
        );
        header(&r, H, T_FLUSH, 0);
        run(&mut r, &[(H, 16, false), (0x3000, 1, true)]);
        header(&r, H, T_IN, 100);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 512, true), (0x3000, 1, true)],
        );
        run(&mut r, &[(H, 16, false)]);
        let c = r.dev.counters;
        assert_eq!(
            (c.reads, c.read_bytes, c.writes, c.write_bytes),
            (1, 1024, 1, 512)
        );
        assert_eq!((c.flushes, c.errors, c.malformed), (1, 1, 1));
        let named = r.dev.counters();
        assert!(named.contains(&("reads", 1)) && named.contains(&("malformed", 1)));
    }
}
