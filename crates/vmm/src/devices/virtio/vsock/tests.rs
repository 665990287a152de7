//! virtio-vsock with virtio-queue's mock driver playing the guest and real
//! Unix sockets on the host side.

use super::packet::*;
use super::*;
use crate::devices::virtio::test_util::{chain, leaked_memory, used_lengths};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const CID: u32 = 3;
const GUEST_PORT: u32 = 1234;

struct Rig {
    mem: &'static GuestMemory,
    dev: Vsock,
    rx: MockSplitQueue<'static, GuestMemory>,
    tx: MockSplitQueue<'static, GuestMemory>,
    queues: Vec<Queue>,
    path: PathBuf,
    /// Next free descriptor slot of each queue, and next rx buffer.
    rx_slot: u16,
    tx_slot: u16,
    seen_rx: usize,
}

fn rig(name: &str) -> Rig {
    let mem = leaked_memory(0x40_0000);
    let dir = std::env::temp_dir().join(format!("tsubame-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let rx = MockSplitQueue::create(mem, GuestAddress(0x10_0000), 64);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x20_0000), 64);
    let ev = MockSplitQueue::create(mem, GuestAddress(0x30_0000), 64);
    let queues = vec![
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        ev.create_queue().unwrap(),
    ];
    Rig {
        mem,
        dev: Vsock::new(CID, &path).unwrap(),
        rx,
        tx,
        queues,
        path,
        rx_slot: 0,
        tx_slot: 0,
        seen_rx: 0,
    }
}

fn hdr(op: u16, host_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID.into(),
        dst_cid: HOST_CID,
        src_port: GUEST_PORT,
        dst_port: host_port,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Header::default()
    }
}

impl Rig {
    /// Posts a receive buffer of 4 KiB (header and data in one descriptor).
    fn post_rx(&mut self) {
        let at = 0x1_0000 + u64::from(self.rx_slot) * 0x1000;
        chain(&self.rx, self.rx_slot, &[(at, 0x1000, true)]);
        self.rx_slot += 1;
    }

    /// Sends a packet from the guest, the header and payload in separate
    /// descriptors when `split`.
    fn send(&mut self, h: Header, payload: &[u8], split: bool) -> Used {
        let at = 0x8_0000 + u64::from(self.tx_slot) * 0x1000;
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let descs: Vec<(u64, u32, bool)> = if split && !payload.is_empty() {
            vec![
                (at, HEADER_LEN as u32, false),
                (at + HEADER_LEN as u64, payload.len() as u32, false),
            ]
        } else {
            vec![(at, bytes.len() as u32, false)]
        };
        chain(&self.tx, self.tx_slot, &descs);
        self.tx_slot += descs.len() as u16;
        self.dev.process_queue(TX, &mut self.queues, self.mem)
    }

    /// Packets the device put on the receive queue since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let lens = used_lengths(self.mem, &self.rx);
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate().skip(self.seen_rx) {
            let at = 0x1_0000 + i as u64 * 0x1000;
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            let h = Header::parse(b[..HEADER_LEN].try_into().unwrap());
            out.push((h, b[HEADER_LEN..].to_vec()));
        }
        self.seen_rx = lens.len();
        out
    }

    fn io(&mut self) -> Used {
        self.dev.process_io(&mut self.queues, self.mem)
    }

    fn guest_listener(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.path.display())).unwrap()
    }
}

#[test]
fn guest_connects_out_and_data_flows_both_ways() {
    let mut r = rig("out");
    let l = r.guest_listener(5000);
    for _ in 0..4 {
        r.post_rx();
    }
    let used = r.send(hdr(OP_REQUEST, 5000, 0), &[], false);
    assert!(used.contains(TX) && used.contains(RX));
    let got = r.received();
    assert_eq!(got.len(), 1);
    let (h, _) = &got[0];
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (OP_RESPONSE, 5000, GUEST_PORT)
    );
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, u64::from(CID)));
    assert_eq!(h.buf_alloc, host::CONN_BUF);
    let (mut s, _) = l.accept().unwrap();

    // Guest to host, header and payload split.
    r.send(hdr(OP_RW, 5000, 4), b"ping", true);
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    // Header and payload in one descriptor.
    r.send(hdr(OP_RW, 5000, 5), b"again", false);
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"again");

    // Host to guest.
    s.write_all(b"pong").unwrap();
    assert_eq!(r.io(), Used::queue(RX));
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, OP_RW);
    assert_eq!(got[0].0.len, 4);
    assert_eq!(got[0].1, b"pong");
    assert_eq!(got[0].0.fwd_cnt, 9, "the guest learns what we passed on");

    // The host end closes: the guest hears SHUTDOWN, answers RST.
    drop(s);
    r.io();
    let got = r.received();
    assert_eq!(got[0].0.op, OP_SHUTDOWN);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    r.send(hdr(OP_RST, 5000, 0), &[], false);
    assert_eq!(r.dev.host.connections(), 0);
}

#[test]
fn host_connects_in_with_connect_and_ok_lines() {
    let mut r = rig("in");
    r.post_rx();
    r.post_rx();
    let mut c = UnixStream::connect(&r.path).unwrap();
    c.write_all(b"CONNECT 6000\n").unwrap();
    r.io();
    let got = r.received();
    assert_eq!(got.len(), 1);
    let (h, _) = got[0];
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 6000));
    let host_port = h.src_port;
    let mut reply = hdr(OP_RESPONSE, host_port, 0);
    reply.src_port = 6000;
    r.send(reply, &[], false);
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("OK {host_port}\n"));
    c.write_all(b"hello guest").unwrap();
    r.io();
    let got = r.received();
    assert_eq!(got[0].1, b"hello guest");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 6000));
}

#[test]
fn the_host_never_sends_more_than_the_guest_has_room_for() {
    let mut r = rig("credit");
    let l = r.guest_listener(5001);
    for _ in 0..4 {
        r.post_rx();
    }
    let mut req = hdr(OP_REQUEST, 5001, 0);
    req.buf_alloc = 6;
    r.send(req, &[], false);
    r.received();
    let (mut s, _) = l.accept().unwrap();
    s.write_all(b"0123456789").unwrap();
    r.io();
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"012345", "six bytes of credit");
    // The guest consumed them and says so: the rest follows.
    let mut upd = hdr(OP_CREDIT_UPDATE, 5001, 0);
    upd.buf_alloc = 6;
    upd.fwd_cnt = 6;
    r.send(upd, &[], false);
    let got = r.received();
    assert_eq!(got[0].1, b"6789");
}

#[test]
fn refused_and_unknown_connections_get_rst() {
    let mut r = rig("rst");
    for _ in 0..4 {
        r.post_rx();
    }
    // Nobody listens on 7000.
    r.send(hdr(OP_REQUEST, 7000, 0), &[], false);
    // Data for a connection that does not exist.
    r.send(hdr(OP_RW, 7001, 3), b"abc", false);
    // A datagram type we do not have.
    let mut dgram = hdr(OP_REQUEST, 7002, 0);
    dgram.type_ = 3;
    r.send(dgram, &[], false);
    let ops: Vec<u16> = r.received().iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, vec![OP_RST; 3]);
}

#[test]
fn malformed_chains_are_dropped_without_a_reply() {
    let mut r = rig("bad");
    r.post_rx();
    let at = 0x9_0000;
    r.mem
        .write_slice(&hdr(OP_REQUEST, 7000, 0).to_bytes(), GuestAddress(at))
        .unwrap();
    // A header cut short.
    chain(&r.tx, 0, &[(at, 20, false)]);
    // A length beyond the chain.
    let long = hdr(OP_RW, 7000, 100).to_bytes();
    r.mem.write_slice(&long, GuestAddress(at + 0x100)).unwrap();
    chain(&r.tx, 1, &[(at + 0x100, HEADER_LEN as u32 + 10, false)]);
    // A device-writable descriptor in a transmit chain.
    chain(
        &r.tx,
        2,
        &[(at, HEADER_LEN as u32, false), (at + 0x200, 64, true)],
    );
    // Outside guest memory.
    chain(&r.tx, 4, &[(0x4000_0000, HEADER_LEN as u32, false)]);
    // From a CID that is not the guest's.
    let mut spoof = hdr(OP_REQUEST, 7000, 0);
    spoof.src_cid = 99;
    r.mem
        .write_slice(&spoof.to_bytes(), GuestAddress(at + 0x300))
        .unwrap();
    chain(&r.tx, 5, &[(at + 0x300, HEADER_LEN as u32, false)]);
    r.dev.process_queue(TX, &mut r.queues, r.mem);
    assert_eq!(used_lengths(r.mem, &r.tx), vec![0; 5], "all returned");
    assert!(r.received().is_empty(), "none answered");

    // Receive chains no packet fits in come back empty.
    let mut r = rig("bad-rx");
    chain(&r.rx, 0, &[(0x1_1000, 16, true)]);
    chain(&r.rx, 1, &[(0x1_2000, 0x1000, false)]);
    chain(&r.rx, 2, &[(0x4000_0000, 0x1000, true)]);
    r.dev.process_queue(RX, &mut r.queues, r.mem);
    assert_eq!(used_lengths(r.mem, &r.rx), vec![0, 0, 0]);
}

#[test]
fn bad_connect_lines_are_closed() {
    fn closed(c: &mut UnixStream) -> bool {
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
    let mut r = rig("line");
    let mut c = UnixStream::connect(&r.path).unwrap();
    c.write_all(b"HELLO 6000\n").unwrap();
    r.io();
    assert!(closed(&mut c));
    let mut c = UnixStream::connect(&r.path).unwrap();
    c.write_all(&[b'C'; 100]).unwrap();
    r.io();
    assert!(closed(&mut c), "an over-long line is closed");
    assert_eq!(r.dev.host.connections(), 0);
}

#[test]
fn config_space_is_the_cid() {
    let r = rig("cfg");
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), u64::from(CID));
}

#[test]
fn a_guest_that_never_reads_cannot_grow_the_control_queue() {
    let dir = std::env::temp_dir().join(format!("tsubame-vsock-{}-bound", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut host = host::Host::new(CID.into(), &dir.join("v.sock")).unwrap();
    // Each packet of an unknown type earns a RST; no receive buffers.
    let mut h = hdr(OP_REQUEST, 7000, 0);
    h.type_ = 3;
    for port in 0..(host::MAX_CONTROL as u32 * 4) {
        h.src_port = port;
        host.from_guest(&h, &[]);
    }
    let (held, dropped) = host.control_backlog();
    assert_eq!(held, host::MAX_CONTROL);
    assert_eq!(dropped, 3 * host::MAX_CONTROL as u64);
}

/// A listener with a backlog of 0 (one queued connection fills it).
fn full_listener(path: &std::path::Path) -> UnixListener {
    let l = UnixListener::bind(path).unwrap();
    // SAFETY: listen(2) on the socket `l` owns; only its backlog changes.
    assert_eq!(
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 0) },
        0
    );
    l
}

#[test]
fn a_host_listener_that_never_accepts_gets_rst_without_a_wait() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut r = rig("full-backlog");
    let path = PathBuf::from(format!("{}_6000", r.path.display()));
    let l = full_listener(&path);
    let _queued = UnixStream::connect(&path).unwrap();
    // If the device blocks in connect, this accepts after 3 s to let it
    // go (and says so), so that the test fails instead of hanging.
    let rescued = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (resc, d) = (rescued.clone(), done.clone());
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        if !d.load(Ordering::SeqCst) {
            resc.store(true, Ordering::SeqCst);
            let _ = l.accept();
            let _ = l.accept();
        }
    });
    r.post_rx();
    let started = std::time::Instant::now();
    r.send(hdr(OP_REQUEST, 6000, 0), &[], false);
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    assert!(
        !rescued.load(Ordering::SeqCst),
        "connect waited {took:?} for an accept"
    );
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0.op, OP_RST,
        "a full backlog is a refused connection"
    );
    assert_eq!(r.dev.host.connections(), 0);
    drop(watchdog);
}
