//! Virtio 1.x devices. A device implements [`VirtioDevice`] and knows
//! nothing of the transport; [`mmio::MmioTransport`] puts it on the MMIO
//! bus (virtio-mmio version 2, modern only), and a PCI transport could wrap
//! the same trait. Queue work runs on the device thread
//! ([`worker::DeviceThread`]), never on a vCPU thread.

pub mod block;
pub mod chain;
pub mod image;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod ram;
pub mod ring;
pub mod ring_driver;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod vsock;
pub mod worker;

use crate::vm::GuestMemory;
use chain::Chain;
use ram::HostRam;
use std::os::fd::RawFd;
use virtio_queue::Queue;

/// `VIRTIO_F_VERSION_1`: every Tsubame device is modern only.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// What a device did to its queues: which got used buffers (the transport
/// interrupts the driver for them) and which it stopped draining at its
/// budget (the transport wakes it for them again, after other work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    used: u32,
    again: u32,
}

fn queue_bit(index: usize) -> u32 {
    1u32.checked_shl(index as u32).unwrap_or(0)
}

impl Used {
    pub const NONE: Used = Used { used: 0, again: 0 };

    pub fn queue(index: usize) -> Used {
        Used {
            used: queue_bit(index),
            again: 0,
        }
    }

    /// `queue(index)` when `used`, else nothing.
    pub fn queue_if(index: usize, used: bool) -> Used {
        if used {
            Used::queue(index)
        } else {
            Used::NONE
        }
    }

    /// Queue `index` has more work than one turn takes.
    pub fn again(index: usize) -> Used {
        Used {
            used: 0,
            again: queue_bit(index),
        }
    }

    pub fn any(self) -> bool {
        self.used != 0
    }

    pub fn contains(self, index: usize) -> bool {
        self.used & queue_bit(index) != 0
    }

    pub fn needs_again(self, index: usize) -> bool {
        self.again & queue_bit(index) != 0
    }
}

impl std::ops::BitOr for Used {
    type Output = Used;
    fn bitor(self, o: Used) -> Used {
        Used {
            used: self.used | o.used,
            again: self.again | o.again,
        }
    }
}

impl std::ops::BitOrAssign for Used {
    fn bitor_assign(&mut self, o: Used) {
        *self = *self | o;
    }
}

/// Most chains a device takes from one queue in one turn. A guest whose
/// buffers overlap its own rings can make every completion announce more
/// work; the budget keeps that from holding the device thread forever.
pub const CHAIN_BUDGET: usize = 128;

/// How a device answers the chains of one turn of [`drain_chains`].
pub trait ChainWork {
    /// Answers `chain` now (`Some(used length)`), or starts it (`None`):
    /// the next `finish` answers it.
    fn start(&mut self, chain: &Chain, ram: &HostRam) -> Option<u32>;
    /// Completes every chain started, calling `done(head, used length)`
    /// for each, in the order they were started.
    fn finish(&mut self, ram: &HostRam, done: &mut dyn FnMut(u16, u32));
}

/// A device that answers every chain at once.
struct AtOnce<F>(F);

impl<F: FnMut(&Chain, &HostRam) -> u32> ChainWork for AtOnce<F> {
    fn start(&mut self, chain: &Chain, ram: &HostRam) -> Option<u32> {
        Some((self.0)(chain, ram))
    }

    fn finish(&mut self, _: &HostRam, _: &mut dyn FnMut(u16, u32)) {}
}

/// Takes the available chains of queue `index`, at most [`CHAIN_BUDGET`],
/// `handle` returning each one's used length.
pub fn drain_queue(
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemory,
    handle: impl FnMut(&Chain, &HostRam) -> u32,
) -> Used {
    drain_chains(index, queue, mem, &mut AtOnce(handle))
}

/// [`drain_queue`] for a device that may start chains and answer them
/// later in the turn: they are returned in the order they were taken, and
/// all before the turn ends (nothing is in flight between turns).
pub fn drain_chains(
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemory,
    work: &mut dyn ChainWork,
) -> Used {
    use virtio_queue::QueueT;
    let ram = HostRam::new(mem);
    let mut chain = Chain::new();
    let mut used = false;
    let mut budget = CHAIN_BUDGET;
    for round in 0.. {
        // With EVENT_IDX, re-check after re-enabling notifications so a
        // chain made available in between is not missed.
        let _ = queue.disable_notification(mem);
        let mut popped = false;
        while chain.pop(queue, &ram) {
            popped = true;
            if let Some(len) = work.start(&chain, &ram) {
                // Chains started earlier go back first.
                used |= return_started(work, &chain, queue, &ram);
                used |= chain.push_used(queue, &ram, len);
            }
            budget -= 1;
            if budget == 0 {
                used |= return_started(work, &chain, queue, &ram);
                return Used::queue_if(index, used) | Used::again(index);
            }
        }
        used |= return_started(work, &chain, queue, &ram);
        // A later round runs only because "more" was announced; finding
        // nothing then means a ring the queue cannot read: stop.
        if (round > 0 && !popped) || !more_after_enabling(queue, mem) {
            return Used::queue_if(index, used);
        }
    }
    Used::queue_if(index, used)
}

/// Completes the chains `work` started and returns them to the driver, in
/// the order they were started; whether any went back.
fn return_started(
    work: &mut dyn ChainWork,
    chain: &Chain,
    queue: &mut Queue,
    ram: &HostRam,
) -> bool {
    let mut used = false;
    work.finish(ram, &mut |head, len| {
        used |= chain.push_used_for(queue, ram, head, len)
    });
    used
}

/// A device's own part of a snapshot (the transport saves the rest).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceState {
    Block(block::BlockState),
    Net { mac: [u8; 6] },
    Vsock { cid: u64 },
    Rng,
}

/// A virtio device, seen from the transport.
pub trait VirtioDevice: Send {
    /// Short name for logs and stats ("virtio-blk").
    fn name(&self) -> &'static str;
    fn device_type(&self) -> u32;
    /// Feature bits offered, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;
    /// One entry per queue: its largest size.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device configuration space, read at `offset`. Bytes beyond its end
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to configuration space; most devices ignore them.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver accepted `features` and set DRIVER_OK.
    fn activate(&mut self, _features: u64) {}
    /// The driver notified queue `index` (of `queues`, all the device's
    /// queues, some perhaps not ready): take what it made available.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used;
    /// A host file descriptor the device thread watches for the device,
    /// edge-triggered (a tap, an epoll set of sockets). Work it cannot
    /// finish for want of buffers waits for the driver's next notify.
    fn io_source(&self) -> Option<RawFd> {
        None
    }
    /// `io_source` became ready.
    fn process_io(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) -> Used {
        Used::NONE
    }
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Snapshot: what the device must find again on restore; anything it
    /// still holds for the host is finished first (a disk is flushed).
    fn save(&mut self) -> Result<DeviceState, String>;
    /// Restore: `state` against this device, opened again from the saved
    /// configuration; a mismatch is an error naming what changed.
    fn restore(&mut self, state: &DeviceState) -> Result<(), String>;
    /// Restore, driver running: what the device owes the driver for the
    /// host side it lost (vsock's transport reset).
    fn restored(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) -> Used {
        Used::NONE
    }
    /// What the device has done so far, for metrics: (name, count) pairs.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Re-enables notifications after a queue ran dry and says whether to look
/// again: true when the driver made more available in between. A corrupt
/// available index (further ahead than the ring holds) makes every pop
/// fail while the index keeps saying "more": that is answered with false,
/// so a guest cannot make the device thread spin.
pub fn more_after_enabling(queue: &mut Queue, mem: &GuestMemory) -> bool {
    use virtio_queue::QueueT;
    if !queue.enable_notification(mem).unwrap_or(false) {
        return false;
    }
    match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(queue.next_avail()) <= queue.size(),
        Err(_) => false,
    }
}

/// Copies `src[offset..]` into `data`, zero-filling past the end: how
/// configuration spaces are read.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < src.len() {
        let n = data.len().min(src.len() - start);
        data[..n].copy_from_slice(&src[start..start + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_zero_fill_past_the_end() {
        let src = [1u8, 2, 3, 4];
        let mut d = [0xaa; 4];
        read_config_bytes(&src, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&src, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&src, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
