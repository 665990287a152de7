//! Virtio 1.x devices. A device implements [`VirtioDevice`] and knows
//! nothing of the transport; [`mmio::MmioTransport`] puts it on the MMIO
//! bus (virtio-mmio version 2, modern only), and a PCI transport could wrap
//! the same trait. Queue work runs on the device thread
//! ([`worker::DeviceThread`]), never on a vCPU thread.

pub mod block;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod ring_driver;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod vsock;
pub mod worker;

use crate::vm::GuestMemory;
use std::os::fd::RawFd;
use virtio_queue::Queue;

/// `VIRTIO_F_VERSION_1`: every Tsubame device is modern only.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// The queues a device put used buffers on (bit `i`: queue `i`): the
/// transport interrupts the driver for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used(u32);

impl Used {
    pub const NONE: Used = Used(0);

    pub fn queue(index: usize) -> Used {
        Used(1u32.checked_shl(index as u32).unwrap_or(0))
    }

    /// `queue(index)` when `used`, else nothing.
    pub fn queue_if(index: usize, used: bool) -> Used {
        if used {
            Used::queue(index)
        } else {
            Used::NONE
        }
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }

    pub fn contains(self, index: usize) -> bool {
        self.0 & Used::queue(index).0 != 0
    }
}

impl std::ops::BitOr for Used {
    type Output = Used;
    fn bitor(self, o: Used) -> Used {
        Used(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Used {
    fn bitor_assign(&mut self, o: Used) {
        self.0 |= o.0;
    }
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
