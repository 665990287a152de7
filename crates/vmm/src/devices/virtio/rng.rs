//! virtio-rng (virtio 1.2, 5.4): fills the driver's buffers from the host's
//! `getrandom`.

use super::iov::{in_memory, total_len, write_bytes};
use super::{drain_queue, DeviceState, Used, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::vm::GuestMemory;
use virtio_queue::Queue;

pub const QUEUE_SIZE: u16 = 64;
/// Most bytes handed out per request; keeps one request from pinning the
/// device thread.
pub const MAX_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    /// Random bytes given to the guest.
    bytes: u64,
}

/// Host randomness, from the kernel's CSPRNG.
pub fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // The system call, not libc's wrapper: on musl, std declares
        // `getrandom` weak, and under LTO that left this call's symbol
        // unresolved (a jump to address 0).
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into
        // `rest`, which we own mutably.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                rest.as_mut_ptr(),
                rest.len(),
                0 as libc::c_uint,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn save(&mut self) -> Result<DeviceState, String> {
        Ok(DeviceState::Rng)
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Rng => Ok(()),
            other => Err(format!("virtio-rng: the snapshot has {other:?} here")),
        }
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("bytes", self.bytes)]
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemory) -> Used {
        let Some(queue) = queues.get_mut(index) else {
            return Used::NONE;
        };
        drain_queue(index, queue, mem, |chain, ram| {
            // Fills the device-writable buffers; readable ones are skipped.
            // Buffers outside guest memory: used with nothing written.
            let Some((_, w)) = chain.buffers().filter(|(_, w)| in_memory(ram, w)) else {
                return 0;
            };
            let mut buf = vec![0u8; total_len(w).min(MAX_BYTES)];
            if let Err(e) = host_random(&mut buf) {
                crate::limited!(Warn, "virtio-rng: {e}");
                return 0;
            }
            if !write_bytes(ram, w, 0, &buf) {
                return 0;
            }
            self.bytes += buf.len() as u64;
            buf.len() as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn used(mem: &GuestMemory, descs: &[(u64, u32, u16)]) -> (u16, u32) {
        let vq = MockSplitQueue::create(mem, GuestAddress(0x10_0000), 16);
        let raw: Vec<_> = descs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)))
            .collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(Rng::default()
            .process_queue(0, std::slice::from_mut(&mut q), mem)
            .any());
        let idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        let len: u32 = mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
        (idx, len)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        assert_eq!(used(&mem, &[(0x1000, 256, WRITE)]), (1, 256));
        let mut b = [0u8; 256];
        mem.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        // 256 random bytes are all zero with probability 2^-2048.
        assert!(b.iter().any(|&x| x != 0));
    }

    #[test]
    fn a_turn_takes_at_most_the_budget_and_asks_for_another() {
        use crate::devices::virtio::CHAIN_BUDGET;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 256);
        let n = CHAIN_BUDGET + 40;
        for i in 0..n {
            let d = RawDescriptor::from(Descriptor::new(0x1000, 16, WRITE, 0));
            vq.desc_table().store(i as u16, d).unwrap();
            vq.avail().ring().ref_at(i).unwrap().store(i as u16);
        }
        vq.avail().idx().store(n as u16);
        let mut q: Queue = vq.create_queue().unwrap();
        let qs = std::slice::from_mut(&mut q);
        let mut rng = Rng::default();
        let first = rng.process_queue(0, qs, &mem);
        assert!(first.any() && first.needs_again(0));
        let idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(usize::from(idx), CHAIN_BUDGET);
        let second = rng.process_queue(0, qs, &mem);
        assert!(second.any() && !second.needs_again(0));
        let idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(usize::from(idx), n);
    }

    #[test]
    fn read_only_or_outside_buffers_get_nothing() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        mem.write_slice(&[7u8; 64], GuestAddress(0x1000)).unwrap();
        assert_eq!(used(&mem, &[(0x1000, 64, 0)]), (1, 0));
        let mut b = [0u8; 64];
        mem.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(b, [7u8; 64], "a read-only buffer is never written");
        assert_eq!(used(&mem, &[(0x4000_0000, 64, WRITE)]), (1, 0));
    }
}
