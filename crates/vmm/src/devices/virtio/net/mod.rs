//! virtio-net (virtio 1.2, 5.1) on a tap device: queue 0 receives, queue 1
//! transmits. Frames move between the tap and guest memory with one
//! readv/writev each, the virtio-net header included: the tap speaks the
//! same header, so checksum and segmentation offloads need no work here.
//! No merged receive buffers: each receive chain takes one whole frame.

pub mod tap;

use super::chain::Chain;
use super::iov::{write_bytes, IoVecs};
use super::mmio::RING_EVENT_IDX;
use super::ram::HostRam;
use super::{
    drain_queue, more_after_enabling, read_config_bytes, DeviceState, Used, VirtioDevice,
    CHAIN_BUDGET, TYPE_NET, VIRTIO_F_VERSION_1,
};
use crate::vm::GuestMemory;
use std::os::fd::RawFd;
use tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_LEN};
use virtio_bindings::bindings::virtio_net as vn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const QUEUE_SIZE: u16 = 256;

/// Ethernet header; a frame shorter than this is not a frame.
const ETH_HLEN: usize = 14;
/// The largest frame a driver may hand over with TSO: 64 KiB of IP
/// packet plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65535 + ETH_HLEN + 4;

const fn bit(b: u32) -> u64 {
    1 << b
}

pub const F_CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
pub const F_GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
pub const F_MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
pub const F_GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
pub const F_GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
pub const F_GUEST_ECN: u64 = bit(vn::VIRTIO_NET_F_GUEST_ECN);
pub const F_HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
pub const F_HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
pub const F_HOST_ECN: u64 = bit(vn::VIRTIO_NET_F_HOST_ECN);

/// Counters, for the log at exit and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Guest chains refused (wrong direction, too short or long, outside
    /// guest memory) and frames the tap refused.
    pub tx_dropped: u64,
    pub rx_bad_buffers: u64,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    acked: u64,
    stats: NetStats,
    /// The last tap error, logged once rather than per frame.
    last_error: Option<std::io::ErrorKind>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Net {
        Net {
            tap,
            mac,
            acked: 0,
            stats: NetStats::default(),
            last_error: None,
        }
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn tap_error(&mut self, what: &str, e: std::io::Error) {
        if self.last_error != Some(e.kind()) {
            log::warn!("virtio-net: {what} on tap {}: {e}", self.tap.name());
            self.last_error = Some(e.kind());
        }
    }

    /// Moves waiting frames from the tap into receive chains until either
    /// runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Used {
        let ram = HostRam::new(mem);
        let mut chain = Chain::new();
        let mut used = false;
        let mut looked_again = false;
        for _ in 0..CHAIN_BUDGET {
            if !chain.pop(queue, &ram) {
                // Out of buffers: ask to be told when more come, and look
                // once more in case some came in between. Finding nothing
                // the second time means a ring that cannot be read (as in
                // `drain_queue`): stop rather than spin.
                if !looked_again && more_after_enabling(queue, mem) {
                    looked_again = true;
                    continue;
                }
                return Used::queue_if(RX, used);
            };
            looked_again = false;
            let writable = chain
                .device_writable(VNET_HDR_LEN + ETH_HLEN)
                .unwrap_or_default();
            let Some(iov) = IoVecs::writable(&ram, writable).filter(|v| !v.is_empty()) else {
                // A chain no frame can go into: hand it back empty.
                self.stats.rx_bad_buffers += 1;
                used |= chain.push_used(queue, &ram, 0);
                continue;
            };
            match self.tap.read_frame(iov.as_slice()) {
                Ok(Some(n)) if n >= VNET_HDR_LEN => {
                    drop(iov);
                    // num_buffers (header bytes 10..12): the tap leaves it.
                    if write_bytes(&ram, writable, 10, &1u16.to_le_bytes()) {
                        self.stats.rx_frames += 1;
                    }
                    used |= chain.push_used(queue, &ram, n as u32);
                }
                Ok(Some(_)) => used |= chain.push_used(queue, &ram, 0),
                Ok(None) => {
                    queue.go_to_previous_position();
                    return Used::queue_if(RX, used);
                }
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    // The tap dropped a frame larger than the chain; the
                    // chain is still free for the next one.
                    queue.go_to_previous_position();
                }
                Err(e) => {
                    queue.go_to_previous_position();
                    self.tap_error("read", e);
                    return Used::queue_if(RX, used);
                }
            }
        }
        Used::queue_if(RX, used) | Used::again(RX)
    }

    /// Sends every frame the driver made available on the transmit queue.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Used {
        drain_queue(TX, queue, mem, |chain, ram| {
            let frame = chain.device_readable(VNET_HDR_LEN + ETH_HLEN..=VNET_HDR_LEN + MAX_FRAME);
            let iov = frame.and_then(|segs| IoVecs::new(ram, segs));
            let sent = match iov.map(|v| self.tap.write_frame(v.as_slice())) {
                Some(Ok(sent)) => sent,
                Some(Err(e)) => {
                    self.tap_error("write", e);
                    false
                }
                None => false,
            };
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_dropped += 1;
            }
            0
        })
    }
}

/// Tap offloads for the receive features the driver accepted: the host
/// stack may then hand over partially checksummed and unsegmented frames.
pub fn tap_offloads(features: u64) -> u32 {
    let mut f = 0;
    if features & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if features & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if features & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if features & F_GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            f |= TUN_F_TSO_ECN;
        }
    }
    f
}

impl VirtioDevice for Net {
    fn save(&mut self) -> Result<DeviceState, String> {
        Ok(DeviceState::Net { mac: self.mac })
    }

    /// The tap was opened again by name (or an override); its offloads
    /// come back with `activate`.
    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Net { mac } => {
                self.mac = *mac;
                Ok(())
            }
            other => Err(format!("virtio-net: the snapshot has {other:?} here")),
        }
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | RING_EVENT_IDX
            | F_MAC
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_ECN
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_ECN
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    /// `struct virtio_net_config`: the MAC address (no status field: the
    /// link is always up).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
        if let Err(e) = self.tap.set_offload(tap_offloads(features)) {
            log::warn!("virtio-net: tap {}: TUNSETOFFLOAD: {e}", self.tap.name());
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        let _ = self.tap.set_offload(0);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("rx_frames", s.rx_frames),
            ("tx_frames", s.tx_frames),
            ("tx_dropped", s.tx_dropped),
            ("rx_bad_buffers", s.rx_bad_buffers),
        ]
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let Some(queue) = queues.get_mut(index) else {
            return Used::NONE;
        };
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
            _ => Used::NONE,
        }
    }

    fn io_source(&self) -> Option<RawFd> {
        Some(self.tap.fd())
    }

    fn process_io(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        match queues.get_mut(RX) {
            Some(q) if q.ready() => self.receive(q, mem),
            _ => Used::NONE,
        }
    }
}

/// `52:54:00:12:34:56`-style text, six hex pairs.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests;
