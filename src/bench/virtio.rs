//! Virtio benchmarks: device-side processing through a host-side ring
//! driver (no guest) against the plain system calls on the same file or
//! tap, and the cost of a queue notify from a guest with and without
//! ioeventfd.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{median, write_guest, BenchArgs, LOAD_ADDR, MMIO_ADDR};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::block::{Block, IoEngine};
use vmm::devices::virtio::ring_driver::RingDriver;
use vmm::devices::virtio::VirtioDevice;
use vmm::vm::GuestMemory;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One virtio-blk workload: block size, random or sequential, read or write.
struct BlkLoad {
    name: &'static str,
    block: usize,
    random: bool,
    write: bool,
    /// Every batch starts with the image out of the page cache: what a
    /// disk read costs, not a copy.
    cold: bool,
}

impl BlkLoad {
    fn bytes_per_run(&self) -> u64 {
        if self.cold {
            BLK_COLD_BYTES_PER_RUN
        } else {
            BLK_BYTES_PER_RUN
        }
    }
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

/// Guest RAM as a VM has it by default: no dirty page tracking (it is
/// for Diff snapshots), so device writes mark no bitmap.
const TRACK_DIRTY: bool = false;

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
        if load.cold {
            uncache(&self.image)?;
        }
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
        if load.cold {
            uncache(&self.file)?;
        }
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
            cold: false,
        },
        BlkLoad {
            name: "4 KiB random read, disk",
            block: 4096,
            random: true,
            write: false,
            cold: true,
        },
        BlkLoad {
            name: "4 KiB random write",
            block: 4096,
            random: true,
            write: true,
            cold: false,
        },
        BlkLoad {
            name: "64 KiB sequential read",
            block: 65536,
            random: false,
            write: false,
            cold: false,
        },
        BlkLoad {
            name: "64 KiB sequential write",
            block: 65536,
            random: false,
            write: true,
            cold: false,
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

const NET_FRAME: usize = 1514;
const NET_BATCH: usize = 256;
const NET_FRAMES_PER_RUN: usize = 32 * NET_BATCH;
const VNET_HDR: usize = vmm::devices::virtio::net::tap::VNET_HDR_LEN;
const ETHERTYPE: u16 = 0x88b5;

/// An Ethernet frame to the broadcast address, EtherType 0x88b5 (local
/// experimental: the host stack drops it), `len` bytes.
fn test_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[0x0e, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.resize(len, 0x5a);
    f
}

/// Brings interface `name` up (SIOCSIFFLAGS), in this thread's namespace.
fn link_up(name: &str) -> Result<(), String> {
    // SAFETY: plain socket(2); closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if s < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    let rc = unsafe {
        let mut rc = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(s);
        rc
    };
    if rc < 0 {
        return Err(format!(
            "bring {name} up: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A raw packet socket that puts frames on `name`'s wire: they come out
/// of the tap's file descriptor.
fn injector(name: &str) -> Result<(std::os::fd::OwnedFd, libc::sockaddr_ll), String> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is new and ours.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(name).map_err(err)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETHERTYPE.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    Ok((fd, addr))
}

fn inject(
    fd: &std::os::fd::OwnedFd,
    addr: &libc::sockaddr_ll,
    frame: &[u8],
    n: usize,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    for _ in 0..n {
        // SAFETY: sendto from a slice we own, to a sockaddr_ll we built.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(format!("inject: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Reads frames from `fd` until none is left, into `bufs` in turn;
/// returns how many.
fn raw_drain(fd: i32, bufs: &mut [Vec<u8>]) -> usize {
    let mut n = 0;
    loop {
        let buf = &mut bufs[n % bufs.len()];
        // SAFETY: read into a buffer we own, with its length.
        if unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } <= 0 {
            return n;
        }
        n += 1;
    }
}

struct NetFigures {
    dev_tx: f64,
    raw_tx: f64,
    dev_rx: f64,
    raw_rx: f64,
}

/// One run of each: seconds for NET_FRAMES_PER_RUN frames.
fn net_run(tap_name: &str) -> Result<NetFigures, String> {
    use vmm::devices::virtio::net::{tap::Tap, Net, RX, TX};
    // No IPv6 on the tap: its neighbour discovery would add frames.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    let tap = Tap::open(tap_name).map_err(err)?;
    link_up(tap_name)?;
    let (inj, addr) = injector(tap_name)?;
    let mut dev = Net::new(tap, [0x0e, 0, 0, 0, 0, 2]);
    let fd = dev.io_source().ok_or("no tap fd")?;
    let mem = vmm::vm::guest_ram(&[(GuestAddress(0), 16 << 20)], TRACK_DIRTY, None)?;
    let (mut rxd, rxq) = RingDriver::new(&mem, 0x1_0000, NET_BATCH as u16).map_err(err)?;
    let (mut txd, txq) = RingDriver::new(&mem, 0x2_0000, NET_BATCH as u16).map_err(err)?;
    let mut queues = vec![rxq, txq];
    const TX_BUF: u64 = 0x10_0000;
    const RX_BUFS: u64 = 0x20_0000;
    let mut frame = vec![0u8; VNET_HDR];
    frame.extend_from_slice(&test_frame(NET_FRAME));
    mem.write_slice(&frame, GuestAddress(TX_BUF)).map_err(err)?;
    // The receive buffers resident, as a guest driver's are and as the
    // raw reads' buffers are (filled when made): page faults on them are
    // no part of the device's cost.
    mem.write_slice(&vec![0u8; NET_BATCH * 4096], GuestAddress(RX_BUFS))
        .map_err(err)?;
    // The raw reads use as many distinct buffers as the device fills.
    let mut scratch = vec![vec![0u8; 4096]; NET_BATCH];
    raw_drain(fd, &mut scratch); // the host stack's own first frames
    let mut f = NetFigures {
        dev_tx: 0.0,
        raw_tx: 0.0,
        dev_rx: 0.0,
        raw_rx: 0.0,
    };
    let batches = NET_FRAMES_PER_RUN / NET_BATCH;
    let wire = test_frame(NET_FRAME);
    for _ in 0..batches {
        // Transmit: the device sends a batch the driver posted...
        for _ in 0..NET_BATCH {
            txd.post(&mem, &[(TX_BUF, frame.len() as u32, false)])
                .map_err(err)?;
        }
        let t = Instant::now();
        let mut used = dev.process_queue(TX, &mut queues, &mem);
        while used.needs_again(TX) {
            used = dev.process_queue(TX, &mut queues, &mem);
        }
        f.dev_tx += t.elapsed().as_secs_f64();
        // ...against writing the same bytes to the tap.
        let t = Instant::now();
        for _ in 0..NET_BATCH {
            // SAFETY: write from a buffer we own, with its length.
            if unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) } < 0 {
                return Err(format!("tap write: {}", std::io::Error::last_os_error()));
            }
        }
        f.raw_tx += t.elapsed().as_secs_f64();

        // Receive: the device fills posted buffers from waiting frames...
        raw_drain(fd, &mut scratch);
        inject(&inj, &addr, &wire, NET_BATCH)?;
        for i in 0..NET_BATCH as u64 {
            rxd.post(&mem, &[(RX_BUFS + i * 4096, 4096, true)])
                .map_err(err)?;
        }
        let before = dev.stats().rx_frames;
        let t = Instant::now();
        // Past its budget the device asks for another turn, as the device
        // thread would give it.
        let mut used = dev.process_io(&mut queues, &mem);
        while used.needs_again(RX) {
            used = dev.process_queue(RX, &mut queues, &mem);
        }
        f.dev_rx += t.elapsed().as_secs_f64();
        let got = dev.stats().rx_frames - before;
        if got != NET_BATCH as u64 {
            return Err(format!("device received {got} of {NET_BATCH} frames"));
        }
        // ...against reading them straight from the tap.
        inject(&inj, &addr, &wire, NET_BATCH)?;
        let t = Instant::now();
        let got = raw_drain(fd, &mut scratch);
        f.raw_rx += t.elapsed().as_secs_f64();
        if got < NET_BATCH {
            return Err(format!("raw read got {got} of {NET_BATCH} frames"));
        }
    }
    let s = dev.stats();
    if s.tx_frames != NET_FRAMES_PER_RUN as u64 || s.tx_dropped != 0 {
        return Err(format!(
            "device sent {} frames, dropped {}",
            s.tx_frames, s.tx_dropped
        ));
    }
    Ok(f)
}

pub fn bench_net(args: &BenchArgs) -> Result<(), String> {
    let runs = args.runs.max(1);
    // A private network namespace: the tap never touches the host's network.
    let figures = std::thread::spawn(move || -> Result<Vec<NetFigures>, String> {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "bench net needs root (CAP_SYS_ADMIN) for a network namespace of its own: {}",
                std::io::Error::last_os_error()
            ));
        }
        (0..runs).map(|_| net_run("tsbbench0")).collect()
    })
    .join()
    .map_err(|_| "bench net thread panicked".to_string())??;
    let per_sec = |v: Vec<f64>| NET_FRAMES_PER_RUN as f64 / median(v);
    let pick = |g: fn(&NetFigures) -> f64| figures.iter().map(g).collect::<Vec<f64>>();
    let (dt, rt) = (per_sec(pick(|f| f.dev_tx)), per_sec(pick(|f| f.raw_tx)));
    let (dr, rr) = (per_sec(pick(|f| f.dev_rx)), per_sec(pick(|f| f.raw_rx)));
    // Each run's own ratio (its batches took turns), their median.
    let ratio = |dev: fn(&NetFigures) -> f64, raw: fn(&NetFigures) -> f64| {
        median(figures.iter().map(|f| raw(f) / dev(f)).collect())
    };
    let tx_ratio = ratio(|f| f.dev_tx, |f| f.raw_tx);
    let rx_ratio = ratio(|f| f.dev_rx, |f| f.raw_rx);
    println!(
        "virtio-net on a tap, {NET_FRAME}-byte frames in batches of {NET_BATCH}, {NET_FRAMES_PER_RUN} per run, median of {runs} (ratio: the median of each run's):"
    );
    println!(
        "  transmit  device {dt:>9.0} frames/s | raw tap write {rt:>9.0} frames/s | ratio {tx_ratio:.2}"
    );
    println!(
        "  receive   device {dr:>9.0} frames/s | raw tap read  {rr:>9.0} frames/s | ratio {rx_ratio:.2}"
    );
    Ok(())
}

/// `count` stores to the QueueNotify register of the virtio device at the
/// first window, then power off.
fn notify_loop_code(count: u32) -> super::AsmResult<Vec<u8>> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    a.mov(rdi, MMIO_ADDR + vmm::devices::virtio::mmio::QUEUE_NOTIFY)?;
    a.xor(eax, eax)?;
    a.mov(ecx, count.div_ceil(super::UNROLL))?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for _ in 0..super::UNROLL {
        a.mov(dword_ptr(rdi), eax)?;
    }
    a.dec(ecx)?;
    a.jnz(top)?;
    super::power_off(&mut a)?;
    a.assemble(LOAD_ADDR)
}

/// µs per notify for a guest with a virtio-rng device.
fn notify_run(kernel: &Path, count: u32, ioeventfd: bool) -> Result<f64, String> {
    super::on_own_thread(|| notify_run_here(kernel, count, ioeventfd))
}

fn notify_run_here(kernel: &Path, count: u32, ioeventfd: bool) -> Result<f64, String> {
    let mut cfg = vmm::VmConfig::new(kernel);
    cfg.serial = vmm::config::SerialConfig::None;
    cfg.memory_mib = 16;
    cfg.rng = true;
    cfg.ioeventfd = ioeventfd;
    let machine = vmm::vm::builder::build(&cfg).map_err(err)?;
    let start = Instant::now();
    let outcome = machine.run(None);
    let took = start.elapsed();
    if outcome.reason != vmm::StopReason::PowerOff {
        return Err(format!("notify guest ended with: {}", outcome.reason));
    }
    Ok(took.as_secs_f64() * 1e6 / f64::from(count))
}

pub fn bench_notify(args: &BenchArgs, dir: &Path) -> Result<(), String> {
    let count = args.exits;
    let code = notify_loop_code(count).map_err(err)?;
    let path = write_guest(dir, "notify", &code).map_err(err)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(1) {
        with.push(notify_run(&path, count, true)?);
        without.push(notify_run(&path, count, false)?);
    }
    let (w, wo) = (median(with), median(without));
    println!(
        "virtio queue notify from a guest ({count} per run, median of {}): ioeventfd {w:.2} µs | MMIO exit to the VMM {wo:.2} µs | {:.2}x",
        args.runs,
        wo / w
    );
    Ok(())
}
