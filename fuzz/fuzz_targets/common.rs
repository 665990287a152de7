#![allow(dead_code)] // each target uses what it needs
//! Shared by the targets: guest memory filled from the input, and a small
//! disk image.

use std::fs::File;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::vm::GuestMemory;

pub const MEM_SIZE: usize = 0x1_0000;

/// 64 KiB of guest memory, starting with `bytes`.
pub fn memory(bytes: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = bytes.len().min(MEM_SIZE);
    mem.write_slice(&bytes[..n], GuestAddress(0)).unwrap();
    mem
}

/// A 64 KiB image in the temp directory (unlinked: nothing is left
/// behind), made once per process.
pub fn disk() -> (File, u64) {
    static DISK: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    let f = DISK.get_or_init(make_disk).try_clone().unwrap();
    (f, 0x1_0000 / 512)
}

fn make_disk() -> File {
    let path = std::env::temp_dir().join(format!("tsubame-fuzz-{}.img", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(0x1_0000).unwrap();
    let _ = std::fs::remove_file(&path);
    f
}

/// A ready 16-entry queue: descriptors at `base`, the driver ring 0x100
/// above, the device ring 0x200 above.
pub fn queue(base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some(base as u32 + 0x100), Some(0));
    q.set_used_ring_address(Some(base as u32 + 0x200), Some(0));
    q.set_ready(true);
    q
}
