//! Loading the kernel: an ELF vmlinux (with or without a PVH note) or a
//! bzImage. A bzImage's payload is decompressed on the host and its vmlinux
//! booted directly; `BootPath::GuestDecompress` (or a payload the host
//! cannot read) boots it the classic way, through its own decompressor.

use std::fmt;
use std::io::Cursor;
use std::time::{Duration, Instant};

use linux_loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress};

use super::decompress::{self, Compression};
use crate::vm::layout::HIMEM_START;
use crate::vm::GuestMemory;

const ELF_MAGIC: &[u8] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// The 64-bit entry of a bzImage's protected-mode code (boot protocol 2.12+).
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1 << 0;

/// How a bzImage is booted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootPath {
    /// Decompress on the host and boot the vmlinux (fall back to the guest
    /// path for payloads the host cannot read).
    #[default]
    HostDecompress,
    /// Always run the kernel's own decompressor in the guest.
    GuestDecompress,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel image is empty")]
    Empty,
    #[error("the kernel image is neither an ELF vmlinux nor a bzImage (it starts {0:02x?})")]
    UnknownFormat(Vec<u8>),
    #[error("the ELF kernel is not a 64-bit x86 image (class {class}, machine {machine})")]
    NotX86_64 { class: u8, machine: u16 },
    #[error("the bzImage is truncated: {0}")]
    Truncated(&'static str),
    #[error("the bzImage uses boot protocol {0:#x}; Tsubame needs 2.12 or later (64-bit entry)")]
    OldProtocol(u16),
    #[error("the bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear)")]
    No64BitEntry,
    #[error("cannot load the kernel into guest memory: {0} (is --memory large enough?)")]
    Load(#[from] linux_loader::loader::Error),
}

/// How the kernel will be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEntry {
    /// 32-bit PVH entry from the ELF note `XEN_ELFNOTE_PHYS32_ENTRY`.
    Pvh(u64),
    /// 64-bit boot protocol entry.
    Linux64(u64),
}

/// How the image was unpacked, for the log and for benchmarks.
#[derive(Clone, Debug, PartialEq)]
pub enum Unpacked {
    Elf,
    HostDecompressed {
        format: Compression,
        compressed: usize,
        decompressed: usize,
        took: Duration,
    },
    GuestDecompress {
        why: String,
    },
}

impl fmt::Display for Unpacked {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Unpacked::Elf => write!(f, "ELF vmlinux"),
            Unpacked::HostDecompressed {
                format,
                compressed,
                decompressed,
                took,
            } => write!(
                f,
                "bzImage, {format} payload decompressed on the host ({compressed} -> {decompressed} bytes in {:.1} ms)",
                took.as_secs_f64() * 1e3
            ),
            Unpacked::GuestDecompress { why } => {
                write!(f, "bzImage, decompressed by the guest ({why})")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadedKernel {
    pub entry: KernelEntry,
    /// The bzImage's setup header, copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded image (its memory size, not file size).
    pub end: u64,
    pub unpacked: Unpacked,
}

/// Loads `image` into `mem` and says how to enter it.
pub fn load(mem: &GuestMemory, image: &[u8], path: BootPath) -> Result<LoadedKernel, Error> {
    if image.is_empty() {
        return Err(Error::Empty);
    }
    if image.starts_with(ELF_MAGIC) {
        return load_elf(mem, image, None, Unpacked::Elf);
    }
    let hdr = bzimage_header(image)?;
    let guest_reason = match path {
        BootPath::GuestDecompress => "requested".to_string(),
        BootPath::HostDecompress => match extract_payload(image, &hdr) {
            Ok((format, vmlinux, took)) => {
                let unpacked = Unpacked::HostDecompressed {
                    format,
                    compressed: hdr.payload_length as usize,
                    decompressed: vmlinux.len(),
                    took,
                };
                return load_elf(mem, &vmlinux, Some(hdr), unpacked);
            }
            Err(why) => {
                log::warn!("cannot decompress the bzImage on the host ({why}); the guest will");
                why
            }
        },
    };
    load_bzimage(mem, image, hdr, guest_reason)
}

fn load_elf(
    mem: &GuestMemory,
    image: &[u8],
    setup_header: Option<setup_header>,
    unpacked: Unpacked,
) -> Result<LoadedKernel, Error> {
    let class = image.get(4).copied().unwrap_or(0);
    let machine = image
        .get(18..20)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if class != ELFCLASS64 || machine != EM_X86_64 {
        return Err(Error::NotX86_64 { class, machine });
    }
    let r = Elf::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )?;
    let entry = match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.0),
        _ => KernelEntry::Linux64(r.kernel_load.0),
    };
    Ok(LoadedKernel {
        entry,
        setup_header,
        end: r.kernel_end,
        unpacked,
    })
}

/// Reads and checks a bzImage's setup header.
pub fn bzimage_header(image: &[u8]) -> Result<setup_header, Error> {
    let size = std::mem::size_of::<setup_header>();
    let bytes = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size)
        .ok_or_else(|| Error::UnknownFormat(image.iter().take(8).copied().collect()))?;
    let hdr = setup_header::from_slice(bytes)
        .copied()
        .ok_or(Error::Truncated("setup header"))?;
    if { hdr.header } != HDRS_MAGIC {
        return Err(Error::UnknownFormat(
            image.iter().take(8).copied().collect(),
        ));
    }
    if hdr.version < 0x020c {
        return Err(Error::OldProtocol(hdr.version));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::No64BitEntry);
    }
    Ok(hdr)
}

/// The compressed vmlinux inside a bzImage, decompressed.
fn extract_payload(
    image: &[u8],
    hdr: &setup_header,
) -> Result<(Compression, Vec<u8>, Duration), String> {
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects as usize
    };
    let start = (setup_sects + 1) * 512 + hdr.payload_offset as usize;
    let payload = start
        .checked_add(hdr.payload_length as usize)
        .and_then(|end| image.get(start..end))
        .ok_or("the payload runs past the end of the file")?;
    let t = Instant::now();
    let (format, vmlinux) = decompress::decompress(payload).map_err(|e| e.to_string())?;
    if !vmlinux.starts_with(ELF_MAGIC) {
        return Err(format!("the {format} payload is not an ELF vmlinux"));
    }
    Ok((format, vmlinux, t.elapsed()))
}

fn load_bzimage(
    mem: &GuestMemory,
    image: &[u8],
    hdr: setup_header,
    why: String,
) -> Result<LoadedKernel, Error> {
    let r = BzImage::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(HIMEM_START)),
    )?;
    // The decompressor unpacks into [pref_address, +init_size): keep the
    // initrd out of it.
    let unpack_end = { hdr.pref_address }.max(r.kernel_load.0) + u64::from(hdr.init_size);
    Ok(LoadedKernel {
        entry: KernelEntry::Linux64(r.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET),
        setup_header: r.setup_header.or(Some(hdr)),
        end: r.kernel_end.max(unpack_end),
        unpacked: Unpacked::GuestDecompress { why },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::decompress::compress;
    use crate::boot::elf_image::{bzimage, elf64};
    use crate::vm::layout::MemoryLayout;
    use vm_memory::Bytes;

    fn memory(mib: u64) -> GuestMemory {
        GuestMemory::from_ranges(&MemoryLayout::new(mib).unwrap().ranges()).unwrap()
    }

    const CODE: &[u8] = &[0xf4, 0x90, 0x90, 0xeb, 0xfc];

    #[test]
    fn elf_without_pvh_note_uses_the_64bit_entry() {
        let mem = memory(16);
        let k = load(&mem, &elf64(CODE, 0x20_0000, None), BootPath::default()).unwrap();
        assert_eq!(k.entry, KernelEntry::Linux64(0x20_0000));
        assert_eq!(k.unpacked, Unpacked::Elf);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, CODE);
    }

    #[test]
    fn pvh_note_is_preferred() {
        let mem = memory(16);
        let k = load(
            &mem,
            &elf64(CODE, 0x20_0000, Some(0x20_0002)),
            BootPath::default(),
        )
        .unwrap();
        assert_eq!(k.entry, KernelEntry::Pvh(0x20_0002));
    }

    #[test]
    fn bzimage_payload_is_decompressed_on_the_host() {
        let mem = memory(16);
        let vmlinux = elf64(CODE, 0x20_0000, Some(0x20_0001));
        for payload in [compress::lz4_legacy(&vmlinux), compress::gzip(&vmlinux)] {
            let image = bzimage(&[0xcc; 0x400], &payload);
            let k = load(&mem, &image, BootPath::HostDecompress).unwrap();
            assert_eq!(k.entry, KernelEntry::Pvh(0x20_0001));
            assert!(matches!(k.unpacked, Unpacked::HostDecompressed { .. }));
            assert!(k.setup_header.is_some());
        }
    }

    #[test]
    fn guest_path_loads_the_protected_mode_code() {
        let mem = memory(16);
        let image = bzimage(
            &[0xcc; 0x400],
            &compress::gzip(&elf64(CODE, 0x20_0000, None)),
        );
        let k = load(&mem, &image, BootPath::GuestDecompress).unwrap();
        assert_eq!(k.entry, KernelEntry::Linux64(HIMEM_START + 0x200));
        assert!(matches!(k.unpacked, Unpacked::GuestDecompress { .. }));
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(HIMEM_START + 0x200))
            .unwrap();
        assert_eq!(b, [0xcc]);
    }

    #[test]
    fn unreadable_payload_falls_back_to_the_guest() {
        let mem = memory(16);
        let lzo = [0x89, b'L', b'Z', b'O', 1, 2, 3, 4];
        let k = load(
            &mem,
            &bzimage(&[0x90; 0x400], &lzo),
            BootPath::HostDecompress,
        )
        .unwrap();
        match k.unpacked {
            Unpacked::GuestDecompress { why } => assert!(why.contains("lzo"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_images_are_named() {
        let mem = memory(16);
        let err = |img: &[u8]| {
            load(&mem, img, BootPath::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).contains("empty"));
        assert!(err(&[0x12; 4096]).contains("neither an ELF"));
        assert!(err(b"\x7fELF").contains("64-bit x86"));
        let mut elf32 = elf64(CODE, 0x20_0000, None);
        elf32[4] = 1;
        assert!(err(&elf32).contains("64-bit x86"));
        let full = elf64(CODE, 0x20_0000, None);
        assert!(err(&full[..70]).contains("cannot load"));
        // A kernel placed beyond guest memory.
        assert!(err(&elf64(CODE, 0x4000_0000, None)).contains("--memory"));
        let mut old = bzimage(&[0x90; 0x400], &[0; 16]);
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(err(&old).contains("boot protocol"));
    }
}
