//! virtio-net's processing through a host-side ring driver (no guest)
//! against raw reads and writes on the same tap.

use std::time::Instant;

use super::super::{median, BenchArgs};
use super::{err, TRACK_DIRTY};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::ring_driver::RingDriver;
use vmm::devices::virtio::VirtioDevice;

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
        let mut rc = libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(s, libc::SIOCSIFFLAGS as _, &req);
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

/// Reads frames from `fd` until none is left, into the 4 KiB buffers
/// at `bufs` in turn; returns how many.
fn raw_drain(fd: i32, bufs: &[*mut u8]) -> usize {
    let mut n = 0;
    loop {
        let buf = bufs[n % bufs.len()];
        // SAFETY: each pointer is 4 KiB of guest RAM that `net_run`'s
        // mapping keeps alive, written by nothing else meanwhile.
        if unsafe { libc::read(fd, buf.cast(), 4096) } <= 0 {
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
    // The raw side's buffers: guest RAM pages as well, so both sides copy
    // to and from the same kind of memory at the same alignment (heap
    // buffers, where the allocator puts them, were ~5 % slower to fill
    // here than page-aligned guest RAM).
    const RAW_RX_BUFS: u64 = 0x40_0000;
    let mut frame = vec![0u8; VNET_HDR];
    frame.extend_from_slice(&test_frame(NET_FRAME));
    mem.write_slice(&frame, GuestAddress(TX_BUF)).map_err(err)?;
    // The receive buffers resident, as a guest driver's are and as the
    // raw reads' buffers are (filled when made): page faults on them are
    // no part of the device's cost.
    mem.write_slice(&vec![0u8; NET_BATCH * 4096], GuestAddress(RX_BUFS))
        .map_err(err)?;
    mem.write_slice(&vec![0u8; NET_BATCH * 4096], GuestAddress(RAW_RX_BUFS))
        .map_err(err)?;
    // The raw reads use as many distinct buffers as the device fills.
    // Host pointers as the device takes them (HostRam, the receive
    // buffers marked dirty as its iovecs are).
    let ram = vmm::devices::virtio::ram::HostRam::new(&mem);
    let outside = |gpa: u64| format!("{gpa:#x} is outside the bench's guest RAM");
    let scratch = (0..NET_BATCH as u64)
        .map(|i| RAW_RX_BUFS + i * 4096)
        .map(|gpa| {
            ram.host_ptr_for_write(gpa, 4096)
                .ok_or_else(|| outside(gpa))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tx_frame = ram
        .host_ptr(TX_BUF, frame.len())
        .ok_or_else(|| outside(TX_BUF))?;
    raw_drain(fd, &scratch); // the host stack's own first frames
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
            // SAFETY: the device's own frame in guest RAM, `frame.len()`
            // bytes, which the mapping keeps alive.
            if unsafe { libc::write(fd, tx_frame.cast(), frame.len()) } < 0 {
                return Err(format!("tap write: {}", std::io::Error::last_os_error()));
            }
        }
        f.raw_tx += t.elapsed().as_secs_f64();

        // Receive: the device fills posted buffers from waiting frames...
        raw_drain(fd, &scratch);
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
        let got = raw_drain(fd, &scratch);
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

/// Frames through the device against the raw tap, both ways. Without the
/// right to make a network namespace, `bench net` fails and
/// `bench all` (`optional`) says the benchmark was skipped, and why.
pub fn bench_net(args: &BenchArgs, optional: bool) -> Result<(), String> {
    let runs = args.runs.max(1);
    // A private network namespace: the tap never touches the host's network.
    let figures = std::thread::spawn(move || -> Result<Option<Vec<NetFigures>>, String> {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let why = format!(
                "bench net needs root (CAP_SYS_ADMIN) for a network namespace of its own: {}",
                std::io::Error::last_os_error()
            );
            if !optional {
                return Err(why);
            }
            println!("virtio-net: skipped ({why})");
            return Ok(None);
        }
        (0..runs)
            .map(|_| net_run("tsbbench0"))
            .collect::<Result<_, _>>()
            .map(Some)
    })
    .join()
    .map_err(|_| "bench net thread panicked".to_string())??;
    let Some(figures) = figures else {
        return Ok(());
    };
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
