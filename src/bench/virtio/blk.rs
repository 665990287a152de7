//! virtio-blk's processing through a host-side ring driver (no guest)
//! against plain pread/pwrite on the same image.

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::{median, BenchArgs};
use super::{err, TRACK_DIRTY};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::block::{Block, IoEngine};
use vmm::devices::virtio::ring_driver::RingDriver;
use vmm::devices::virtio::VirtioDevice;
use vmm::vm::GuestMemory;

/// One virtio-blk workload: block size, random or sequential, read or write.
struct BlkLoad {
    name: &'static str,
    block: usize,
    random: bool,
    write: bool,
    cache: Cache,
}

/// Where a load's data is when each batch starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// In the page cache: what a copy costs.
    Warm,
    /// Out of it: what a disk read costs.
    Cold,
    /// Out of it, then every other block of the batch back in: reads that
    /// hit the cache among reads that wait for the disk.
    Half,
}

impl BlkLoad {
    fn bytes_per_run(&self) -> u64 {
        if self.cache != Cache::Warm {
            BLK_COLD_BYTES_PER_RUN
        } else {
            BLK_BYTES_PER_RUN
        }
    }
}

/// The page cache as the load wants it before a batch (untimed): the
/// image dropped from it, then half the batch's blocks read back.
fn prepare_cache(file: &std::fs::File, load: &BlkLoad, batch: &[u64]) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    if load.cache == Cache::Warm {
        return Ok(());
    }
    uncache(file)?;
    if load.cache == Cache::Half {
        let mut buf = vec![0u8; load.block];
        for &off in batch.iter().step_by(2) {
            file.read_exact_at(&mut buf, off).map_err(err)?;
        }
    }
    Ok(())
}

/// Drops the image's pages from the page cache (they are clean: the
/// image was synced after it was written).
fn uncache(file: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: a hint on a descriptor this function borrows.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        e => Err(format!(
            "posix_fadvise: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

const BLK_IMAGE: u64 = 64 << 20;
const BLK_BYTES_PER_RUN: u64 = 128 << 20;
/// A read from the disk takes ~50 times a copy from the cache.
const BLK_COLD_BYTES_PER_RUN: u64 = BLK_BYTES_PER_RUN / 16;
const BLK_BATCH: usize = 64;

/// Offsets a workload visits: xorshift-random block slots, or sequential.
fn blk_offsets(load: &BlkLoad) -> Vec<u64> {
    let slots = BLK_IMAGE / load.block as u64;
    let n = (load.bytes_per_run() / load.block as u64) as usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            let slot = if load.random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % slots
            } else {
                i as u64 % slots
            };
            slot * load.block as u64
        })
        .collect()
}

const BLK_HDR: u64 = 0x10_0000;
const BLK_STATUS: u64 = 0x18_0000;
const BLK_DATA: u64 = 0x20_0000;

/// Guest memory for a run, its data buffers touched (resident) first.
fn blk_memory(load: &BlkLoad) -> Result<GuestMemory, String> {
    let mem = vmm::vm::guest_ram(&[(GuestAddress(0), 16 << 20)], TRACK_DIRTY, None)?;
    mem.write_slice(
        &vec![0x5au8; BLK_BATCH * load.block],
        GuestAddress(BLK_DATA),
    )
    .map_err(|e| e.to_string())?;
    Ok(mem)
}

/// A driver's work for one batch: a header, data and status chain per
/// request.
fn blk_post(
    mem: &GuestMemory,
    drv: &mut RingDriver,
    load: &BlkLoad,
    batch: &[u64],
) -> Result<(), String> {
    use vmm::devices::virtio::block::{self, RequestHeader};
    let kind = if load.write {
        block::T_OUT
    } else {
        block::T_IN
    };
    for (i, &off) in batch.iter().enumerate() {
        let i = i as u64;
        let hdr = RequestHeader {
            request_type: kind,
            reserved: 0,
            sector: off / block::SECTOR_SIZE,
        };
        mem.write_obj(hdr, GuestAddress(BLK_HDR + i * 16))
            .map_err(|e| e.to_string())?;
        let data = BLK_DATA + i * load.block as u64;
        drv.post(
            mem,
            &[
                (BLK_HDR + i * 16, 16, false),
                (data, load.block as u32, !load.write),
                (BLK_STATUS + i, 1, true),
            ],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One side of a blk run, timed batch by batch: the device, or plain
/// pread/pwrite on the same file.
trait BlkSide {
    fn batch(&mut self, load: &BlkLoad, batch: &[u64]) -> Result<Duration, String>;
}

/// Requests through the device: header, data, status per chain, posted in
/// batches the way a driver with a deep queue would.
struct DeviceSide {
    /// The image, for dropping it from the page cache.
    image: std::fs::File,
    mem: GuestMemory,
    drv: RingDriver,
    queue: virtio_queue::Queue,
    dev: vmm::devices::virtio::block::Block,
    requests: usize,
}

impl DeviceSide {
    fn new(image: &Path, load: &BlkLoad, engine: IoEngine) -> Result<DeviceSide, String> {
        // The guest's RAM is resident, as the plain run's buffers are:
        // page faults on it are no part of the device's cost.
        let mem = blk_memory(load)?;
        let (drv, queue) = RingDriver::new(&mem, 0x1_0000, 256).map_err(err)?;
        let dev = Block::open(image, false, None, engine).map_err(err)?;
        Ok(DeviceSide {
            image: std::fs::File::open(image).map_err(err)?,
            mem,
            drv,
            queue,
            dev,
            requests: 0,
        })
    }

    /// Every request answered, and answered OK.
    fn check(&self, load: &BlkLoad) -> Result<(), String> {
        use vmm::devices::virtio::block;
        let mut status = [0u8; BLK_BATCH];
        self.mem
            .read_slice(&mut status, GuestAddress(BLK_STATUS))
            .map_err(err)?;
        if status.iter().any(|&s| s != block::S_OK) {
            return Err(format!("{}: a request failed", load.name));
        }
        if self.drv.used_idx(&self.mem) != self.requests as u16 {
            return Err(format!("{}: not every request was used", load.name));
        }
        Ok(())
    }
}

impl BlkSide for DeviceSide {
    fn batch(&mut self, load: &BlkLoad, batch: &[u64]) -> Result<Duration, String> {
        // Only the device's processing is timed, not this driver's posting.
        blk_post(&self.mem, &mut self.drv, load, batch)?;
        self.requests += batch.len();
        prepare_cache(&self.image, load, batch)?;
        let start = Instant::now();
        self.dev
            .process_queue(0, std::slice::from_mut(&mut self.queue), &self.mem);
        Ok(start.elapsed())
    }
}

/// The same requests with plain pread/pwrite.
struct PlainSide {
    file: std::fs::File,
    bufs: Vec<Vec<u8>>,
    mem: GuestMemory,
    drv: RingDriver,
}

impl PlainSide {
    fn new(image: &Path, load: &BlkLoad) -> Result<PlainSide, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(err)?;
        // As many buffers as the device has requests in flight, used in
        // turn: the same memory footprint, so caches favour neither side.
        // The same driver posting before each batch, untimed on both
        // sides, for the same reason: its writes evict what the timed
        // part had cached.
        let mem = blk_memory(load)?;
        let (drv, _) = RingDriver::new(&mem, 0x1_0000, 256).map_err(err)?;
        Ok(PlainSide {
            file,
            bufs: vec![vec![0x5au8; load.block]; BLK_BATCH],
            mem,
            drv,
        })
    }
}

impl BlkSide for PlainSide {
    fn batch(&mut self, load: &BlkLoad, batch: &[u64]) -> Result<Duration, String> {
        use std::os::unix::fs::FileExt;
        blk_post(&self.mem, &mut self.drv, load, batch)?;
        prepare_cache(&self.file, load, batch)?;
        let start = Instant::now();
        for (&off, buf) in batch.iter().zip(self.bufs.iter_mut()) {
            if load.write {
                self.file.write_all_at(buf, off).map_err(err)?;
            } else {
                self.file.read_exact_at(buf, off).map_err(err)?;
            }
        }
        Ok(start.elapsed())
    }
}

/// One run: the device and the plain calls take turns batch by batch, so
/// both meet the same host (this host's speed drifts by a fifth within
/// seconds, more than the gap measured). Each side visits every offset
/// once, in the same order, the plain side a quarter of the run later:
/// a batch never reads what the other side's batch just brought into the
/// CPU's caches (half a run later is the same offsets again, for the
/// sequential loads). Returns (device, plain) times.
fn blk_run(
    image: &Path,
    load: &BlkLoad,
    engine: IoEngine,
    offsets: &[u64],
) -> Result<(Duration, Duration), String> {
    let mut device = DeviceSide::new(image, load, engine)?;
    let mut plain = PlainSide::new(image, load)?;
    let batches: Vec<&[u64]> = offsets.chunks(BLK_BATCH).collect();
    let shift = batches.len() / 4;
    let (mut d, mut p) = (Duration::ZERO, Duration::ZERO);
    for (i, batch) in batches.iter().enumerate() {
        let other = batches[(i + shift) % batches.len()];
        // Neither side always goes first.
        if i % 2 == 0 {
            d += device.batch(load, batch)?;
            p += plain.batch(load, other)?;
        } else {
            p += plain.batch(load, other)?;
            d += device.batch(load, batch)?;
        }
    }
    device.check(load)?;
    Ok((d, p))
}

pub fn bench_blk(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let image = dir.join("blk.img");
    std::fs::write(&image, vec![0xa5u8; BLK_IMAGE as usize]).map_err(|e| e.to_string())?;
    // Clean pages, so that the uncached load can drop them.
    std::fs::File::open(&image)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    println!(
        "virtio-blk device processing vs pread/pwrite ({} MiB per run over a {} MiB image in the page cache, {} MiB uncached; median of {}):",
        BLK_BYTES_PER_RUN >> 20,
        BLK_IMAGE >> 20,
        BLK_COLD_BYTES_PER_RUN >> 20,
        args.runs
    );
    let loads = [
        BlkLoad {
            name: "4 KiB random read",
            block: 4096,
            random: true,
            write: false,
            cache: Cache::Warm,
        },
        BlkLoad {
            name: "4 KiB random read, disk",
            block: 4096,
            random: true,
            write: false,
            cache: Cache::Cold,
        },
        BlkLoad {
            name: "4 KiB random read, half",
            block: 4096,
            random: true,
            write: false,
            cache: Cache::Half,
        },
        BlkLoad {
            name: "4 KiB random write",
            block: 4096,
            random: true,
            write: true,
            cache: Cache::Warm,
        },
        BlkLoad {
            name: "64 KiB sequential read",
            block: 65536,
            random: false,
            write: false,
            cache: Cache::Warm,
        },
        BlkLoad {
            name: "64 KiB sequential write",
            block: 65536,
            random: false,
            write: true,
            cache: Cache::Warm,
        },
    ];
    // The batched engine when this kernel has io_uring, and the
    // synchronous one it falls back to.
    let mut engines = vec![(IoEngine::Sync, "sync")];
    match Block::open(&image, false, None, IoEngine::Async) {
        Ok(_) => engines.insert(0, (IoEngine::Async, "io_uring")),
        Err(e) => println!("  (no io_uring engine here: {e})"),
    }
    for load in &loads {
        let offsets = blk_offsets(load);
        for &(engine, engine_name) in &engines {
            let (mut dev, mut plain, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.runs.max(1) {
                let (d, p) = blk_run(&image, load, engine, &offsets)?;
                dev.push(d.as_secs_f64());
                plain.push(p.as_secs_f64());
                ratio.push(p.as_secs_f64() / d.as_secs_f64());
            }
            // The ratio is each run's own (both sides met the same host),
            // its median over the runs.
            let (d, p, r) = (median(dev), median(plain), median(ratio));
            let n = offsets.len() as f64;
            let mib = (load.bytes_per_run() >> 20) as f64;
            println!(
                "  {:<24} {:<8} device {:>8.0} req/s {:>7.0} MiB/s | plain {:>8.0} req/s {:>7.0} MiB/s | ratio {:.2}",
                load.name,
                engine_name,
                n / d,
                mib / d,
                n / p,
                mib / p,
                r
            );
        }
    }
    Ok(())
}
