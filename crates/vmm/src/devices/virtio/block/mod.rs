//! virtio-blk on a raw image file (virtio 1.2, 5.2).
//!
//! Requests are parsed from the chain's readable and writable bytes, never
//! from its descriptor layout: a header split across descriptors, or data
//! and status in one descriptor, work like any other legal chain. Every
//! sector range is checked against the image before the file is touched.

mod io;
mod route;
mod uring;
mod wire;

use super::chain::Chain;
use super::iov::{read_bytes, skip_front_into, take_front_into, total_len, write_bytes};
use super::ram::HostRam;
use super::{
    drain_chains, read_config_bytes, ChainWork, DeviceState, Used, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::devices::virtio::mmio::RING_EVENT_IDX;
use crate::vm::GuestMemory;
use io::{punch_or_zero, transfer};
use route::{ReadRoute, Way};
use std::fs::File;
use std::path::Path;
use uring::{Op, Uring};
use virtio_queue::Queue;
use vm_memory::ByteValued;

pub use wire::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] super::image::Error),
    #[error("disk image {path}: size {size} is not a multiple of 512 bytes")]
    Size { path: String, size: u64 },
    #[error("disk image {path}: engine=async needs io_uring, which this kernel refused: {source}")]
    NoUring {
        path: String,
        source: std::io::Error,
    },
}

/// Why a request failed: the status the driver sees.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    /// Malformed or out-of-range request, or a host I/O error.
    Io,
    Unsupported,
}

/// How a disk moves its data between the image and guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring when the kernel gives Tsubame a restricted ring, else
    /// synchronous (said in the log).
    #[default]
    Auto,
    /// `pread`/`pwrite` on the device thread, one request at a time.
    Sync,
    /// io_uring, one submission per batch of requests; an error where the
    /// kernel has none (Firecracker's `Async`).
    Async,
}

impl std::str::FromStr for IoEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<IoEngine, String> {
        match s {
            "auto" => Ok(IoEngine::Auto),
            "sync" => Ok(IoEngine::Sync),
            "async" => Ok(IoEngine::Async),
            _ => Err(format!("engine={s}: expected auto, sync or async")),
        }
    }
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
    /// Reads that went through the io_uring (those the page cache could
    /// not answer at once), and the batches that took them.
    pub ring_reads: u64,
    pub ring_batches: u64,
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
    /// The batched engine, when the disk has one, and whether a read
    /// tries the page cache before it.
    uring: Option<Uring>,
    route: ReadRoute,
    /// Reads started this turn, and their chains' heads and status
    /// bytes; all complete before the turn ends.
    ops: Vec<Op>,
    waiting: Vec<(u16, u64)>,
    /// Chains answered but not yet returned: (head, used length).
    finished: Vec<(u16, u32)>,
}

/// Most requests started before the engine is made to complete them (the
/// drain's own budget is smaller; this bounds a caller that has none).
const MAX_BATCH: usize = QUEUE_SIZE as usize;

impl Block {
    pub fn open(
        path: &Path,
        read_only: bool,
        id: Option<&str>,
        engine: IoEngine,
    ) -> Result<Block, Error> {
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
        let mut block = Block::with_file(file, size / SECTOR_SIZE, read_only, &id_text);
        match engine {
            IoEngine::Sync => {}
            IoEngine::Auto => {
                if let Err(e) = block.use_uring() {
                    log::info!("virtio-blk {name}: no io_uring ({e}): synchronous engine");
                }
            }
            IoEngine::Async => block
                .use_uring()
                .map_err(|source| Error::NoUring { path: name, source })?,
        }
        Ok(block)
    }

    /// Moves the data with an io_uring from now on.
    pub fn use_uring(&mut self) -> std::io::Result<()> {
        self.uring = Some(Uring::new(&self.file, u32::from(QUEUE_SIZE))?);
        Ok(())
    }

    /// Sends every read to the io_uring, as on a file system that cannot
    /// read from the page cache alone (`RWF_NOWAIT`): the ring's own path,
    /// for tests and fuzzing.
    pub fn ring_only_reads(&mut self) {
        self.route = ReadRoute::ring_only();
    }

    /// Whether the data moves through io_uring.
    #[cfg(test)]
    pub fn batched(&self) -> bool {
        self.uring.is_some()
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
            uring: None,
            route: ReadRoute::new(),
            ops: Vec::new(),
            waiting: Vec::new(),
            finished: Vec::new(),
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

    /// Executes one request, or starts it on the batched engine. Returns
    /// how many bytes were written into the driver's buffers before the
    /// status byte.
    fn execute(
        &mut self,
        header: RequestHeader,
        ram: &HostRam,
        io: ChainIo<'_>,
    ) -> Result<Answer, Fault> {
        let ChainIo { data_out, data_in } = io;
        // Anything but a read follows the reads started before it (a
        // write must not overtake them, a flush or discard must see them
        // done).
        if header.request_type != T_IN {
            self.complete(ram);
        }
        match header.request_type {
            // Data moves straight between the file and guest memory
            // (preadv/pwritev on the chain's buffers): no bounce buffer.
            T_IN | T_OUT => {
                let write = header.request_type == T_OUT;
                if write && self.read_only {
                    return Err(Fault::Io);
                }
                let segs = if write { data_out } else { data_in };
                let len = total_len(segs);
                if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
                    return Err(Fault::Io);
                }
                let offset = self.range(header.sector, len as u64)?;
                // Reads go by the route: done now from the page cache,
                // or to the batched engine; a buffered write does
                // not wait for the disk, and io_uring hands one to a
                // worker thread on file systems that cannot take it
                // without blocking (ext4: 0.70 of pwrite against 0.99 in
                // `bench blk`), so writes stay synchronous, after the
                // reads started before them.
                if self.uring.is_some() && len > 0 && !write {
                    return match self.route.read(&self.file, ram, segs, offset)? {
                        // Answered now, unless reads started before it
                        // are still to complete: then after them.
                        Way::Done if self.ops.is_empty() => Ok(Answer::Now(self.count(false, len))),
                        Way::Done => Ok(Answer::Later(Op::done(segs, offset, len as i32))),
                        Way::Ring => Ok(Answer::Later(Op::read(segs, offset))),
                    };
                }
                transfer(&self.file, ram, segs, offset, write)?;
                Ok(Answer::Now(self.count(write, len)))
            }
            T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| Fault::Io)?;
                }
                self.counters.flushes += 1;
                Ok(Answer::Now(0))
            }
            T_GET_ID => {
                scatter(ram, data_in, &self.id)?;
                Ok(Answer::Now(ID_BYTES as u32))
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
                Ok(Answer::Now(0))
            }
            _ => Err(Fault::Unsupported),
        }
    }

    /// A read or write done: counted; the bytes written into the
    /// driver's buffers before the status byte.
    fn count(&mut self, write: bool, len: usize) -> u32 {
        if write {
            self.counters.writes += 1;
            self.counters.write_bytes += len as u64;
            0
        } else {
            self.counters.reads += 1;
            self.counters.read_bytes += len as u64;
            len as u32
        }
    }

    /// Handles one chain: `Some(used length)` (data written plus the
    /// status byte, or 0 when the chain cannot carry a status: dropped),
    /// or `None` when it was started on the batched engine (answered by
    /// the next `complete`).
    fn start(&mut self, chain: &Chain, ram: &HostRam) -> Option<u32> {
        let Some((readable, writable)) = chain.buffers() else {
            self.counters.malformed += 1;
            return Some(0);
        };
        // The status is the chain's last writable byte, wherever it sits;
        // with no writable byte there is nowhere to answer: dropped.
        let Some(&(last, last_len)) = writable.iter().rev().find(|s| s.1 > 0) else {
            self.counters.malformed += 1;
            return Some(0);
        };
        let status_addr = last + last_len as u64 - 1;
        const HEADER: usize = std::mem::size_of::<RequestHeader>();
        let (mut out_buf, mut in_buf) = (
            std::mem::take(&mut self.data_out),
            std::mem::take(&mut self.data_in),
        );
        // The usual chain (header, data, status byte, each in its own
        // buffers) is read in place; any other layout is cut into copies.
        let header = match readable.first() {
            Some(&(at, len)) if len >= HEADER => ram.read_obj::<RequestHeader>(at).ok_or(Fault::Io),
            _ => {
                let mut h = RequestHeader::default();
                gather(ram, readable, h.as_mut_slice()).map(|()| h)
            }
        };
        let result = header.and_then(|header| {
            let data_out: &[(u64, usize)] = match readable {
                [(_, HEADER), rest @ ..] => rest,
                _ => {
                    skip_front_into(readable, HEADER, &mut out_buf);
                    &out_buf
                }
            };
            let data_in: &[(u64, usize)] = match writable {
                [rest @ .., (_, 1)] => rest,
                _ => {
                    take_front_into(writable, total_len(writable) - 1, &mut in_buf);
                    &in_buf
                }
            };
            self.execute(header, ram, ChainIo { data_out, data_in })
        });
        (self.data_out, self.data_in) = (out_buf, in_buf);
        match result {
            Ok(Answer::Later(op)) => {
                if self.ops.len() >= MAX_BATCH {
                    self.complete(ram);
                }
                self.ops.push(op);
                self.waiting.push((chain.head(), status_addr));
                None
            }
            Ok(Answer::Now(n)) => Some(self.answer(ram, status_addr, Ok(n))),
            Err(f) => Some(self.answer(ram, status_addr, Err(f))),
        }
    }

    /// Writes a request's status; returns the chain's used length.
    fn answer(&mut self, ram: &HostRam, status_addr: u64, result: Result<u32, Fault>) -> u32 {
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

    /// Completes every read started on the batched engine and answers it
    /// (returned to the driver by `finish`). A short read, or one the ring
    /// could not finish, is done again synchronously.
    fn complete(&mut self, ram: &HostRam) {
        if self.ops.is_empty() {
            return;
        }
        if let Some(uring) = &mut self.uring {
            let for_ring = self.ops.iter().filter(|op| op.result == uring::NOT_DONE);
            let n = for_ring.count() as u64;
            if n > 0 {
                self.counters.ring_reads += n;
                self.counters.ring_batches += 1;
            }
            if let Err(e) = uring.run(ram, &mut self.ops) {
                log::error!("virtio-blk: io_uring failed ({e}): synchronous engine from now on");
                self.uring = None;
            }
        }
        let (mut ops, mut waiting) = (
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.waiting),
        );
        for (op, (head, status_addr)) in ops.drain(..).zip(waiting.drain(..)) {
            let len = total_len(&op.segs);
            let moved = match op.result {
                n if n >= 0 && n as usize == len => Ok(()),
                n if n >= 0 || n == uring::NOT_DONE || n == -libc::EINTR || n == -libc::EAGAIN => {
                    transfer(&self.file, ram, &op.segs, op.offset, false)
                }
                _ => Err(Fault::Io),
            };
            let result = moved.map(|()| self.count(false, len));
            let used = self.answer(ram, status_addr, result);
            self.finished.push((head, used));
        }
        (self.ops, self.waiting) = (ops, waiting);
    }
}

impl ChainWork for Block {
    fn start(&mut self, chain: &Chain, ram: &HostRam) -> Option<u32> {
        Block::start(self, chain, ram)
    }

    fn finish(&mut self, ram: &HostRam, done: &mut dyn FnMut(u16, u32)) {
        self.complete(ram);
        for (head, used) in self.finished.drain(..) {
            done(head, used);
        }
    }
}

/// A request done now (bytes written before the status byte), or a read
/// for the batched engine.
enum Answer {
    Now(u32),
    Later(Op),
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
            ("ring_reads", c.ring_reads),
            ("ring_batches", c.ring_batches),
        ]
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let Some(queue) = queues.get_mut(index) else {
            return Used::NONE;
        };
        drain_chains(index, queue, mem, self)
    }
}

#[cfg(test)]
mod tests;
