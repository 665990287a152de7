//! virtio-vsock (virtio 1.2, 5.10), hybrid: guest stream sockets reach the
//! host as Unix stream sockets ([`host::Host`]). Queue 0 carries packets to
//! the guest, queue 1 from it; queue 2 (events) is only for migration and
//! stays unused.

pub mod host;
pub mod packet;

use super::chain::Chain;
use super::iov::{in_memory, read_bytes, skip_front, total_len, write_bytes};
use super::ram::HostRam;
use super::{
    drain_queue, DeviceState, Used, VirtioDevice, CHAIN_BUDGET, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};
use crate::vm::GuestMemory;
use host::{Host, MAX_PAYLOAD};
use packet::{Header, HEADER_LEN};
use std::os::fd::RawFd;
use std::path::Path;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

pub use host::Error;

pub struct Vsock {
    cid: u64,
    host: Host,
    /// Transmit chains dropped as malformed.
    malformed: u64,
}

impl Vsock {
    pub fn new(cid: u32, socket: &Path) -> Result<Vsock, Error> {
        Ok(Vsock {
            cid: cid.into(),
            host: Host::new(cid.into(), socket)?,
            malformed: 0,
        })
    }

    /// Packets from the guest: each handed to the host side; malformed
    /// chains are used and dropped.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Used {
        drain_queue(TX, queue, mem, |chain, ram| {
            let packet = chain
                .device_readable(HEADER_LEN..=usize::MAX)
                .and_then(|segs| read_packet(ram, segs));
            match packet {
                Some((h, payload)) => self.host.from_guest(&h, &payload),
                _ => {
                    self.malformed += 1;
                    crate::limited!(Debug, "vsock: dropped a malformed transmit chain")
                }
            }
            0
        })
    }

    /// Fills receive chains with what the host side has for the guest.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Used {
        let ram = HostRam::new(mem);
        let mut chain = Chain::new();
        let mut used = false;
        for _ in 0..CHAIN_BUDGET {
            if !chain.pop(queue, &ram) {
                return Used::queue_if(RX, used);
            }
            let writable = chain.device_writable(HEADER_LEN).unwrap_or_default();
            let room = total_len(writable);
            if room == 0 || !in_memory(&ram, writable) {
                // No packet can go there: hand it back empty.
                used |= chain.push_used(queue, &ram, 0);
                continue;
            }
            let Some((h, data)) = self.host.to_guest(room - HEADER_LEN) else {
                queue.go_to_previous_position();
                return Used::queue_if(RX, used);
            };
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(&data);
            if write_bytes(&ram, writable, 0, &bytes) {
                used |= chain.push_used(queue, &ram, bytes.len() as u32);
            } else {
                self.host.unsend(h, data);
                used |= chain.push_used(queue, &ram, 0);
            }
        }
        Used::queue_if(RX, used) | Used::again(RX)
    }
}

/// Header and payload from a transmit chain, split anywhere.
fn read_packet(ram: &HostRam, segs: &[(u64, usize)]) -> Option<(Header, Vec<u8>)> {
    let total = total_len(segs);
    if total < HEADER_LEN {
        return None;
    }
    let mut hb = [0u8; HEADER_LEN];
    read_bytes(ram, segs, &mut hb).then_some(())?;
    let h = Header::parse(&hb);
    let len = h.len as usize;
    if len > MAX_PAYLOAD || len > total - HEADER_LEN {
        return None;
    }
    let mut payload = vec![0u8; len];
    read_bytes(ram, &skip_front(segs, HEADER_LEN), &mut payload).then_some(())?;
    Some((h, payload))
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops every connection.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

impl VirtioDevice for Vsock {
    fn save(&mut self) -> Result<DeviceState, String> {
        Ok(DeviceState::Vsock { cid: self.cid })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Vsock { cid } if *cid == self.cid => Ok(()),
            other => Err(format!(
                "virtio-vsock (cid {}): the snapshot has {other:?} here",
                self.cid
            )),
        }
    }

    /// The host ends of the guest's connections belonged to the old
    /// process: tell the guest they are gone (virtio 1.2, 5.10.6.6).
    fn restored(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let Some(q) = queues.get_mut(EVENT).filter(|q| q.ready()) else {
            return Used::NONE;
        };
        let ram = HostRam::new(mem);
        let mut chain = Chain::new();
        if !chain.pop(q, &ram) {
            log::warn!("virtio-vsock: no event buffer for the transport reset");
            return Used::NONE;
        }
        let writable = chain.device_writable(4).unwrap_or_default();
        let len = if write_bytes(&ram, writable, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
            4
        } else {
            0
        };
        Used::queue_if(EVENT, chain.push_used(q, &ram, len))
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    /// `struct virtio_vsock_config`: the guest's CID.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn reset(&mut self) {
        self.host.reset();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("connections", self.host.connections_opened()),
            ("resets", self.host.resets_sent()),
            ("control_dropped", self.host.control_backlog().1),
            ("malformed", self.malformed),
        ]
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let mut used = Used::NONE;
        if index == TX {
            if let Some(q) = queues.get_mut(TX) {
                used |= self.transmit(q, mem);
            }
        }
        // Transmitted packets may need answers, new receive buffers may
        // take what waits.
        if let Some(q) = queues.get_mut(RX).filter(|q| q.ready()) {
            used |= self.receive(q, mem);
        }
        used
    }

    fn io_source(&self) -> Option<RawFd> {
        Some(self.host.fd())
    }

    fn process_io(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        self.host.process_events();
        match queues.get_mut(RX) {
            Some(q) if q.ready() => self.receive(q, mem),
            _ => Used::NONE,
        }
    }
}

#[cfg(test)]
mod tests;
