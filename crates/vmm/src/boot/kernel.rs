//! Loading the kernel: an ELF vmlinux (with or without a PVH note) or a
//! bzImage. A bzImage's payload is decompressed on the host and its vmlinux
//! booted directly; `BootPath::GuestDecompress` (or a payload the host
//! cannot read) boots it the classic way, through its own decompressor.

use std::fmt;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use linux_loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress, ReadVolatile};

use super::decompress::{self, Compression};
use super::stream::{self, ForwardReader};
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
    #[error("cannot read the kernel image: {0}")]
    Read(std::io::Error),
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
        /// Bytes of vmlinux decompressed: when streamed, only as far as
        /// its last loadable segment.
        decompressed: usize,
        /// Loaded as it was decompressed, never whole in memory.
        streamed: bool,
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
                streamed,
                took,
            } => write!(
                f,
                "bzImage, {format} payload decompressed on the host{} ({compressed} -> {decompressed} bytes in {:.1} ms)",
                if *streamed { " as it loaded" } else { "" },
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

/// Loads `image` into `mem` and says how to enter it. `image` is read in
/// place: a vmlinux's segments go from it straight into guest memory, and
/// a bzImage's payload is decompressed as it is loaded.
pub fn load<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemory,
    image: &mut F,
    path: BootPath,
) -> Result<LoadedKernel, Error> {
    let head = read_head(image)?;
    if head.is_empty() {
        return Err(Error::Empty);
    }
    if head.starts_with(ELF_MAGIC) {
        check_elf(&head)?;
        return load_elf(mem, image, None, Unpacked::Elf);
    }
    let hdr = bzimage_header(&head)?;
    let guest_reason = match path {
        BootPath::GuestDecompress => "requested".to_string(),
        BootPath::HostDecompress => match host_decompress(mem, image, hdr) {
            Ok(kernel) => return Ok(kernel),
            Err(NotOnHost::Load(e)) => return Err(e),
            Err(NotOnHost::Payload(why)) => {
                log::warn!("cannot decompress the bzImage on the host ({why}); the guest will");
                why
            }
        },
    };
    load_bzimage(mem, image, hdr, guest_reason)
}

/// The image's first bytes: enough for an ELF header or a bzImage's
/// setup header.
fn read_head<F: Read + Seek>(image: &mut F) -> Result<Vec<u8>, Error> {
    let len = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    let mut head = Vec::with_capacity(len);
    image.rewind().map_err(Error::Read)?;
    image
        .take(len as u64)
        .read_to_end(&mut head)
        .map_err(Error::Read)?;
    Ok(head)
}

fn check_elf(head: &[u8]) -> Result<(), Error> {
    let class = head.get(4).copied().unwrap_or(0);
    let machine = head
        .get(18..20)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if class != ELFCLASS64 || machine != EM_X86_64 {
        return Err(Error::NotX86_64 { class, machine });
    }
    Ok(())
}

fn load_elf<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemory,
    image: &mut F,
    setup_header: Option<setup_header>,
    unpacked: Unpacked,
) -> Result<LoadedKernel, Error> {
    let r = Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START)))?;
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

/// Where a bzImage's compressed vmlinux lies in the file: (offset, length).
pub fn payload_range(hdr: &setup_header) -> (u64, u64) {
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let start = (setup_sects + 1) * 512 + u64::from(hdr.payload_offset);
    (start, u64::from(hdr.payload_length))
}

/// Why a bzImage was not booted from a host-decompressed vmlinux.
enum NotOnHost {
    /// The payload: the guest's own decompressor may still read it.
    Payload(String),
    /// The vmlinux itself could not be loaded: no use trying the guest.
    Load(Error),
}

/// Decompresses the bzImage's payload into a vmlinux and loads that: as a
/// stream where the format allows (and the vmlinux's segments come in file
/// order), else whole.
fn host_decompress<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemory,
    image: &mut F,
    hdr: setup_header,
) -> Result<LoadedKernel, NotOnHost> {
    let payload = |e: &dyn fmt::Display| NotOnHost::Payload(e.to_string());
    let (start, len) = payload_range(&hdr);
    let file_len = image.seek(SeekFrom::End(0)).map_err(|e| payload(&e))?;
    if start + len > file_len {
        return Err(payload(&"the payload runs past the end of the file"));
    }
    let mut magic = Vec::with_capacity(8);
    image
        .seek(SeekFrom::Start(start))
        .map_err(|e| payload(&e))?;
    (&mut *image)
        .take(len.min(8))
        .read_to_end(&mut magic)
        .map_err(|e| payload(&e))?;
    let format = decompress::detect(&magic)
        .ok_or_else(|| payload(&decompress::Error::Unknown(magic.clone())))?;
    let t = Instant::now();
    image
        .seek(SeekFrom::Start(start))
        .map_err(|e| payload(&e))?;
    if let Some(stream) = decompress::stream(format, &mut *image, len).map_err(|e| payload(&e))? {
        let mut vmlinux = ForwardReader::new(stream, decompress::MAX_KERNEL_SIZE as u64);
        let head = vmlinux.head().to_vec();
        let loaded = load_vmlinux(mem, &mut vmlinux, &head, format, hdr);
        let unpacked = Unpacked::HostDecompressed {
            format,
            compressed: len as usize,
            decompressed: vmlinux.passed() as usize,
            streamed: true,
            took: t.elapsed(),
        };
        match (loaded, vmlinux.failure()) {
            (Ok(mut k), _) => {
                k.unpacked = unpacked;
                return Ok(k);
            }
            (Err(e), None) => return Err(e),
            (Err(_), Some(f @ stream::Failure::Backward { .. })) => {
                log::info!(
                    "the vmlinux cannot be loaded as a stream ({f}): decompressing it whole"
                );
            }
            (Err(_), Some(f)) => return Err(payload(&format!("{format} payload: {f}"))),
        }
    }
    // Whole: the payload, then the vmlinux, in memory.
    image
        .seek(SeekFrom::Start(start))
        .map_err(|e| payload(&e))?;
    let mut compressed = Vec::new();
    (&mut *image)
        .take(len)
        .read_to_end(&mut compressed)
        .map_err(|e| payload(&e))?;
    let (format, vmlinux) = decompress::decompress(&compressed).map_err(|e| payload(&e))?;
    drop(compressed);
    let decompressed = vmlinux.len();
    let head = vmlinux[..vmlinux.len().min(64)].to_vec();
    let mut k = load_vmlinux(mem, &mut Cursor::new(vmlinux), &head, format, hdr)?;
    k.unpacked = Unpacked::HostDecompressed {
        format,
        compressed: len as usize,
        decompressed,
        streamed: false,
        took: t.elapsed(),
    };
    Ok(k)
}

/// Loads a decompressed vmlinux, whose first bytes are `head` (`unpacked`
/// is the caller's to fill in).
fn load_vmlinux<R: Read + Seek + ReadVolatile>(
    mem: &GuestMemory,
    vmlinux: &mut R,
    head: &[u8],
    format: Compression,
    hdr: setup_header,
) -> Result<LoadedKernel, NotOnHost> {
    if !head.starts_with(ELF_MAGIC) {
        return Err(NotOnHost::Payload(format!(
            "the {format} payload is not an ELF vmlinux"
        )));
    }
    check_elf(head).map_err(NotOnHost::Load)?;
    load_elf(mem, vmlinux, Some(hdr), Unpacked::Elf).map_err(NotOnHost::Load)
}

fn load_bzimage<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemory,
    image: &mut F,
    hdr: setup_header,
    why: String,
) -> Result<LoadedKernel, Error> {
    let r = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START)))?;
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

    fn load_bytes(mem: &GuestMemory, image: &[u8], path: BootPath) -> Result<LoadedKernel, Error> {
        load(mem, &mut Cursor::new(image), path)
    }

    /// A vmlinux of `len` bytes of code (so that it spans many buffers).
    fn big_vmlinux(len: usize) -> (Vec<u8>, Vec<u8>) {
        let code: Vec<u8> = (0..len as u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        (elf64(&code, 0x20_0000, Some(0x20_0001)), code)
    }

    fn streamed(k: &LoadedKernel) -> Option<bool> {
        match k.unpacked {
            Unpacked::HostDecompressed { streamed, .. } => Some(streamed),
            _ => None,
        }
    }

    #[test]
    fn bzimage_payloads_stream_into_memory_or_load_whole() {
        let mem = memory(32);
        let (vmlinux, code) = big_vmlinux(9 << 20);
        let small = &vmlinux[..];
        for (payload, want_streamed) in [
            (compress::lz4_legacy(&vmlinux), true),
            (compress::gzip(&vmlinux), true),
            (compress::zstd(small), true),
            (compress::bzip2(small), true),
            (
                compress::xz(&elf64(CODE, 0x20_0000, Some(0x20_0001))),
                false,
            ),
        ] {
            let image = bzimage(&[0xcc; 0x400], &payload);
            let k = load_bytes(&mem, &image, BootPath::HostDecompress).unwrap();
            assert_eq!(k.entry, KernelEntry::Pvh(0x20_0001));
            assert_eq!(streamed(&k), Some(want_streamed), "{}", k.unpacked);
            if want_streamed {
                let mut back = vec![0u8; code.len()];
                mem.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
                assert!(back == code, "{}: the segment differs", k.unpacked);
            }
        }
    }

    #[test]
    fn a_vmlinux_that_goes_back_is_decompressed_whole() {
        let mem = memory(16);
        // Turn the PT_NOTE into a PT_LOAD of the note's bytes (before the
        // code in the file, after it in the program headers) at address 0.
        let mut vmlinux = elf64(CODE, 0x20_0000, Some(0x20_0001));
        let note_phdr = 64 + 56;
        vmlinux[note_phdr..note_phdr + 4].copy_from_slice(&1u32.to_le_bytes());
        let note_off = 64 + 2 * 56;
        let image = bzimage(&[0xcc; 0x400], &compress::gzip(&vmlinux));
        let k = load_bytes(&mem, &image, BootPath::HostDecompress).unwrap();
        assert_eq!(streamed(&k), Some(false), "{}", k.unpacked);
        assert_eq!(k.entry, KernelEntry::Linux64(0x20_0000));
        let mut note = [0u8; 20];
        mem.read_slice(&mut note, GuestAddress(0)).unwrap();
        assert_eq!(note[..], vmlinux[note_off..note_off + 20]);
    }

    #[test]
    fn a_payload_corrupt_midway_falls_back_to_the_guest() {
        let mem = memory(32);
        let (vmlinux, _) = big_vmlinux(9 << 20);
        for mut payload in [compress::lz4_legacy(&vmlinux), compress::gzip(&vmlinux)] {
            let mid = payload.len() / 2;
            payload.truncate(mid);
            let image = bzimage(&[0xcc; 0x400], &payload);
            let k = load_bytes(&mem, &image, BootPath::HostDecompress).unwrap();
            match k.unpacked {
                Unpacked::GuestDecompress { why } => {
                    assert!(why.contains("lz4") || why.contains("gzip"), "{why}")
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn a_vmlinux_larger_than_memory_is_a_load_error_not_a_fallback() {
        let mem = memory(16);
        let (vmlinux, _) = big_vmlinux(20 << 20);
        let image = bzimage(&[0xcc; 0x400], &compress::lz4_legacy(&vmlinux));
        let e = load_bytes(&mem, &image, BootPath::HostDecompress).unwrap_err();
        assert!(matches!(e, Error::Load(_)), "{e}");
    }

    #[test]
    fn elf_without_pvh_note_uses_the_64bit_entry() {
        let mem = memory(16);
        let k = load_bytes(&mem, &elf64(CODE, 0x20_0000, None), BootPath::default()).unwrap();
        assert_eq!(k.entry, KernelEntry::Linux64(0x20_0000));
        assert_eq!(k.unpacked, Unpacked::Elf);
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, CODE);
    }

    #[test]
    fn pvh_note_is_preferred() {
        let mem = memory(16);
        let k = load_bytes(
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
            let k = load_bytes(&mem, &image, BootPath::HostDecompress).unwrap();
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
        let k = load_bytes(&mem, &image, BootPath::GuestDecompress).unwrap();
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
        let k = load_bytes(
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
            load_bytes(&mem, img, BootPath::default())
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
