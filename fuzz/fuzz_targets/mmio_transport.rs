//! The virtio-mmio transport as a guest drives it: the input's first byte
//! says how many register accesses follow, each 7 bytes (kind, offset,
//! value) and interleaved with queue processing, in front of a virtio-blk
//! or virtio-rng device; the rest is guest memory, where queues may point.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::VirtioDevice;
use vmm::devices::{BusDevice, IrqLine};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let (ops, mem_bytes) = rest.split_at(rest.len().min(usize::from(count) * 7));
    let mem = common::memory(mem_bytes);
    let device: Box<dyn VirtioDevice> = if count & 1 != 0 {
        let (file, sectors) = common::disk();
        Box::new(Block::with_file(file, sectors, false, "fuzz"))
    } else {
        Box::new(Rng::default())
    };
    let mut t = MmioTransport::new(device, mem, IrqLine::new().unwrap()).unwrap();
    for op in ops.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = [op[3], op[4], op[5], op[6]];
        match op[0] % 5 {
            // Mostly aligned 32-bit accesses, as drivers make.
            0 | 1 => t.write(offset & !3, &value),
            2 => {
                let mut b = [0u8; 4];
                t.read(offset & !3, &mut b);
            }
            // Any size at any offset.
            3 => {
                let len = usize::from(op[0] >> 4) % 9;
                let mut b = [0u8; 8];
                if op[0] & 8 != 0 {
                    t.write(offset, &b[..len]);
                } else {
                    t.read(offset, &mut b[..len]);
                }
            }
            _ => t
                .backend()
                .lock()
                .unwrap()
                .process_queue(usize::from(op[3] % 4)),
        }
    }
});
