//! The kernel loader as a hostile image drives it (`--kernel`, or the
//! API's boot-source). Input byte 0 chooses: 0-1, the rest is the image as
//! it is (an ELF, a bzImage, anything); 2-3, the rest is a vmlinux, packed
//! into a bzImage as Linux packs it (LZ4 legacy), so that its headers and
//! segments reach the streaming loader; otherwise the rest is a payload
//! wrapped in a bzImage as it is. Payloads in bzip2, zstd, xz or lzma are
//! skipped: their bombs are bounded by MAX_KERNEL_SIZE (1 GiB of work),
//! longer than the fuzzer's per-input timeout, and not a defect.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm::boot::decompress::{self, Compression};
use vmm::boot::elf_image::bzimage;
use vmm::boot::kernel::{self, BootPath};
use vmm::vm::GuestMemory;

fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
    for chunk in data.chunks(8 << 20) {
        let block = lz4_flex::block::compress(chunk);
        out.extend((block.len() as u32).to_le_bytes());
        out.extend(block);
    }
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let image = match mode {
        0 | 1 => rest.to_vec(),
        2 | 3 => bzimage(&[0xf4; 0x400], &lz4_legacy(rest)),
        _ => bzimage(&[0xf4; 0x400], rest),
    };
    if let Ok(hdr) = kernel::bzimage_header(&image) {
        let (start, len) = kernel::payload_range(&hdr);
        let payload = image.get(start as usize..).unwrap_or(&[]);
        let payload = &payload[..payload.len().min(len as usize)];
        if matches!(
            decompress::detect(payload),
            Some(Compression::Bzip2 | Compression::Zstd | Compression::Xz | Compression::Lzma)
        ) {
            return;
        }
    }
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    for path in [BootPath::HostDecompress, BootPath::GuestDecompress] {
        let _ = kernel::load(&mem, &mut Cursor::new(&image[..]), path);
    }
});
