//! virtio-blk request parsing and I/O: the input is guest memory holding a
//! 16-entry queue (descriptors at 0, available ring at 0x100, used ring at
//! 0x200, all within the first KiB) and whatever the descriptors point at. Any chain must end in a
//! status or be dropped; never a panic, never an access outside memory.
//! The first byte picks read-only (bit 0), the batched io_uring engine
//! (bit 1), whose reads complete at the end of the turn, and with it every
//! read through the ring instead of the page cache first (bit 2).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let (file, sectors) = common::disk();
    let read_only = data.first().is_some_and(|b| b & 1 != 0);
    let mut blk = Block::with_file(file, sectors, read_only, "fuzz");
    if data.first().is_some_and(|b| b & 2 != 0) {
        // Where the kernel has no io_uring, the input runs on sync alone.
        let _ = blk.use_uring();
        if data.first().is_some_and(|b| b & 4 != 0) {
            blk.ring_only_reads();
        }
    }
    let mut q = common::queue(0);
    blk.process_queue(0, std::slice::from_mut(&mut q), &mem);
});
