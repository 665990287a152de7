//! virtio-net against a socket pair standing in for the tap: every frame
//! the device sends arrives whole at the peer, every frame the peer sends
//! lands in a receive chain, and malformed chains are dropped.

use super::*;
use crate::devices::virtio::test_util::{chain, leaked_memory, used_lengths as used};
use std::io::{Read, Write};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

struct Rig {
    mem: GuestMemory,
    net: Net,
    peer: std::fs::File,
    rx: MockSplitQueue<'static, GuestMemory>,
    tx: MockSplitQueue<'static, GuestMemory>,
    queues: Vec<Queue>,
}

fn rig() -> Rig {
    let mem = leaked_memory(0x40_0000);
    let (tap, peer) = Tap::socket_pair().unwrap();
    let rx = MockSplitQueue::create(mem, GuestAddress(0x10_0000), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x20_0000), 16);
    let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    Rig {
        mem: mem.clone(),
        net: Net::new(tap, [2, 0, 0, 0, 0, 1]),
        peer,
        rx,
        tx,
        queues,
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

fn peer_read(peer: &mut std::fs::File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    match peer.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("{e}"),
    }
}

impl Rig {
    fn tx(&mut self) -> Used {
        self.net.process_queue(TX, &mut self.queues, &self.mem)
    }
}

#[test]
fn transmit_in_one_descriptor_or_split_anywhere() {
    let mut r = rig();
    let f = frame(b"one descriptor");
    r.mem.write_slice(&f, GuestAddress(0x1000)).unwrap();
    chain(&r.tx, 0, &[(0x1000, f.len() as u32, false)]);
    assert_eq!(r.tx(), Used::queue(TX));
    assert_eq!(peer_read(&mut r.peer).unwrap(), f);

    // Header split in the middle, frame in three pieces.
    let g = frame(b"split across four descriptors");
    let cuts = [0usize, 7, 20, 30, g.len()];
    let mut descs = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let at = 0x3000 + 0x100 * i as u64;
        r.mem.write_slice(&g[w[0]..w[1]], GuestAddress(at)).unwrap();
        descs.push((at, (w[1] - w[0]) as u32, false));
    }
    chain(&r.tx, 2, &descs);
    r.tx();
    assert_eq!(peer_read(&mut r.peer).unwrap(), g);
    assert_eq!(used(&r.mem, &r.tx), vec![0, 0]);
    assert_eq!(r.net.stats().tx_frames, 2);
}

#[test]
fn malformed_transmit_chains_are_dropped_not_sent() {
    let mut r = rig();
    let f = frame(b"x");
    r.mem.write_slice(&f, GuestAddress(0x1000)).unwrap();
    // A device-writable descriptor in a transmit chain.
    chain(&r.tx, 0, &[(0x1000, 12, false), (0x1100, 64, true)]);
    // Shorter than a header and an Ethernet header.
    chain(&r.tx, 2, &[(0x1000, 20, false)]);
    // Outside guest memory.
    chain(&r.tx, 3, &[(0x1000, 12, false), (0x4000_0000, 64, false)]);
    // Crossing the end of guest memory.
    chain(&r.tx, 5, &[(0x3f_fff0, 64, false)]);
    // Longer than any frame.
    chain(
        &r.tx,
        6,
        &[(0x1000, (VNET_HDR_LEN + MAX_FRAME + 1) as u32, false)],
    );
    // Zero-length.
    chain(&r.tx, 7, &[(0x1000, 0, false)]);
    r.tx();
    assert_eq!(used(&r.mem, &r.tx), vec![0; 6], "each chain returned");
    assert!(peer_read(&mut r.peer).is_none(), "nothing reached the wire");
    assert_eq!(r.net.stats().tx_dropped, 6);
}

#[test]
fn received_frames_fill_chains_with_num_buffers_set() {
    let mut r = rig();
    // The header straddles two descriptors: num_buffers lands in the second.
    chain(&r.rx, 0, &[(0x5000, 8, true), (0x6000, 2048, true)]);
    let f = frame(b"from the wire");
    r.peer.write_all(&f).unwrap();
    assert_eq!(r.net.process_io(&mut r.queues, &r.mem), Used::queue(RX));
    assert_eq!(used(&r.mem, &r.rx), vec![f.len() as u32]);
    let mut got = vec![0u8; f.len()];
    r.mem
        .read_slice(&mut got[..8], GuestAddress(0x5000))
        .unwrap();
    r.mem
        .read_slice(&mut got[8..], GuestAddress(0x6000))
        .unwrap();
    let mut want = f.clone();
    want[10] = 1; // num_buffers
    assert_eq!(got, want);
    assert_eq!(r.net.stats().rx_frames, 1);
}

#[test]
fn frames_wait_in_the_tap_until_the_driver_posts_buffers() {
    let mut r = rig();
    let f = frame(b"early");
    r.peer.write_all(&f).unwrap();
    assert_eq!(r.net.process_io(&mut r.queues, &r.mem), Used::NONE);
    chain(&r.rx, 0, &[(0x5000, 2048, true)]);
    // The driver's notify for the new buffer delivers the waiting frame.
    assert_eq!(
        r.net.process_queue(RX, &mut r.queues, &r.mem),
        Used::queue(RX)
    );
    assert_eq!(used(&r.mem, &r.rx), vec![f.len() as u32]);
}

#[test]
fn receive_chains_no_frame_fits_are_returned_empty() {
    let mut r = rig();
    // Device-readable, too short, outside memory: each returned empty,
    // and the frame goes into the good chain after them.
    chain(&r.rx, 0, &[(0x5000, 2048, false)]);
    chain(&r.rx, 1, &[(0x5000, 20, true)]);
    chain(&r.rx, 2, &[(0x4000_0000, 2048, true)]);
    chain(&r.rx, 3, &[(0x7000, 2048, true)]);
    let f = frame(b"survivor");
    r.peer.write_all(&f).unwrap();
    r.net.process_io(&mut r.queues, &r.mem);
    assert_eq!(used(&r.mem, &r.rx), vec![0, 0, 0, f.len() as u32]);
    let mut got = vec![0u8; f.len() - VNET_HDR_LEN];
    r.mem
        .read_slice(&mut got, GuestAddress(0x7000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, f[VNET_HDR_LEN..]);
    assert_eq!(r.net.stats().rx_bad_buffers, 3);
}

#[test]
fn offloads_follow_the_accepted_receive_features() {
    assert_eq!(tap_offloads(F_GUEST_TSO4), 0, "TSO needs checksum offload");
    assert_eq!(tap_offloads(F_GUEST_CSUM), TUN_F_CSUM);
    assert_eq!(
        tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
}

#[test]
fn mac_addresses_parse() {
    assert_eq!(
        parse_mac("52:54:00:ab:CD:ef"),
        Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
    );
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:ef:01",
        "5:54:00:ab:cd:ef",
        "+5:54:00:ab:cd:ef",
        "zz:54:00:ab:cd:ef",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

#[test]
fn config_space_is_the_mac() {
    let r = rig();
    let mut b = [0u8; 8];
    r.net.read_config(0, &mut b);
    assert_eq!(b, [2, 0, 0, 0, 0, 1, 0, 0]);
}
