//! Step 4 of a VM's life: putting a kernel in memory and describing the
//! machine to it. Every function here writes guest memory only; the boot
//! vCPU's registers come out as a [`regs::BootRegs`] for the vCPU thread.

pub mod acpi;
pub mod cpuid;
pub mod decompress;
pub mod e820;
pub mod elf_image;
pub mod gdt;
pub mod kernel;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod params;
pub mod regs;
pub mod stream;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};

pub use kernel::{BootPath, KernelEntry, LoadedKernel};
pub use regs::{BootRegs, Entry};

use crate::vm::layout::{self, MemoryLayout, CMDLINE_ADDR, CMDLINE_MAX_SIZE, GDT_ADDR, IDT_ADDR};
use crate::vm::GuestMemory;

/// Real-mode code for the reset vector. There is no firmware to re-run, so
/// a jump to F000:FFF0 (Linux's last-resort "BIOS" restart, which it picks
/// on hardware-reduced ACPI without EFI) writes the ACPI reset register,
/// and the VMM ends the machine as a reset.
pub fn reset_vector() -> [u8; 16] {
    use crate::devices::legacy::{power, ACPI_POWER_PORT};
    let [lo, hi] = (ACPI_POWER_PORT + power::RESET as u16).to_le_bytes();
    [
        0xba,
        lo,
        hi, // mov dx, reset register
        0xb0,
        power::RESET_VALUE, // mov al, reset value
        0xee,               // out dx, al
        0xfa,               // cli
        0xf4,               // hlt
        0xeb,
        0xfd, // jmp back to hlt
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Highest initrd address a kernel without a setup header accepts.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: kernel::Error,
    },
    #[error("initrd {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel and {limit:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    #[error(transparent)]
    Params(#[from] params::Error),
    #[error("cannot write boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the kernel is read from.
#[derive(Clone, Copy, Debug)]
pub enum KernelImage<'a> {
    /// An open file, read in place (never whole into memory).
    File(&'a File),
    /// An image made in memory (benchmarks, tests).
    Bytes(&'a [u8]),
}

/// What the boot needs from the configuration.
pub struct BootConfig<'a> {
    pub kernel_path: &'a Path,
    pub kernel_image: KernelImage<'a>,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub boot_path: BootPath,
    pub acpi: acpi::AcpiConfig,
}

/// The outcome of boot setup.
#[derive(Debug)]
pub struct BootSetup {
    pub entry: Entry,
    pub kernel: LoadedKernel,
    pub initrd: Option<(u64, u64)>,
    pub e820: Vec<e820::E820Entry>,
    pub acpi: acpi::AcpiAddresses,
}

/// Loads the kernel and initrd, writes the command line, memory map, ACPI
/// and MP tables, the boot GDT, and the entry protocol's structures.
pub fn setup(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    cfg: &BootConfig,
) -> Result<BootSetup, Error> {
    let kernel = match cfg.kernel_image {
        KernelImage::File(mut file) => kernel::load(mem, &mut file, cfg.boot_path),
        KernelImage::Bytes(bytes) => kernel::load(mem, &mut Cursor::new(bytes), cfg.boot_path),
    }
    .map_err(|source| Error::Kernel {
        path: cfg.kernel_path.to_owned(),
        source,
    })?;
    let initrd = match cfg.initrd {
        Some(path) => Some(load_initrd(mem, layout, &kernel, path)?),
        None => None,
    };
    let cmdline_len = write_cmdline(mem, cfg.cmdline, &kernel)?;
    let e820 = e820::build(layout);
    let acpi = acpi::write_tables(mem, &cfg.acpi)?;
    // The MP table describes APICs: none without them.
    if cfg.acpi.apic {
        mptable::write(mem, cfg.acpi.cpus)?;
    }
    mem.write_slice(&reset_vector(), GuestAddress(layout::RESET_VECTOR_ADDR))?;

    let info = params::BootInfo {
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len,
        initrd,
        e820: &e820,
        rsdp: acpi.rsdp,
    };
    let entry = match kernel.entry {
        KernelEntry::Pvh(rip) => Entry::Pvh {
            rip,
            start_info: params::write_pvh(mem, &info)?,
        },
        KernelEntry::Linux64(rip) => {
            let zp = params::zero_page(&info, kernel.setup_header)?;
            Entry::Linux64 {
                rip,
                zero_page: params::write_zero_page(mem, &zp)?,
                cr3: paging::write_identity_map(mem)?,
            }
        }
    };
    let gdt: Vec<u8> = entry.gdt().iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    Ok(BootSetup {
        entry,
        kernel,
        initrd,
        e820,
        acpi,
    })
}

/// Places the initrd as high as the kernel allows, page aligned.
fn load_initrd(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<(u64, u64), Error> {
    let read_err = |source| Error::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let limit = (addr_max + 1).min(layout.low_end());
    let lowest = (kernel.end + PAGE - 1) & !(PAGE - 1);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|&a| a >= lowest.max(layout::HIMEM_START))
        .ok_or_else(|| Error::InitrdTooLarge {
            path: path.to_owned(),
            size,
            limit,
        })?;
    let mut done = 0;
    while done < size as usize {
        let n = mem
            .read_volatile_from(
                GuestAddress(addr + done as u64),
                &mut file,
                size as usize - done,
            )
            .map_err(|e| read_err(std::io::Error::other(e)))?;
        if n == 0 {
            return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        done += n;
    }
    Ok((addr, size))
}

/// Writes the command line, NUL-terminated; returns its length.
fn write_cmdline(mem: &GuestMemory, cmdline: &str, kernel: &LoadedKernel) -> Result<usize, Error> {
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    // A bzImage says how long a command line it takes (without the NUL).
    let max = kernel
        .setup_header
        .map(|h| h.cmdline_size as usize)
        .filter(|&n| n != 0)
        .unwrap_or(CMDLINE_MAX_SIZE - 1)
        .min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))?;
    Ok(cmdline.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::elf_image::elf64;

    fn memory(mib: u64) -> (GuestMemory, MemoryLayout) {
        let layout = MemoryLayout::new(mib).unwrap();
        (GuestMemory::from_ranges(&layout.ranges()).unwrap(), layout)
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tsubame-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn cfg<'a>(image: &'a [u8], initrd: Option<&'a Path>, cmdline: &'a str) -> BootConfig<'a> {
        BootConfig {
            kernel_path: Path::new("test-kernel"),
            kernel_image: KernelImage::Bytes(image),
            initrd,
            cmdline,
            boot_path: BootPath::default(),
            acpi: acpi::AcpiConfig {
                cpus: 1,
                apic: true,
                devices: vec![],
            },
        }
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let (mem, layout) = memory(64);
        let image = elf64(&[0xf4], 0x20_0000, None);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let path = temp_file("initrd", &data);
        let s = setup(&mem, &layout, &cfg(&image, Some(&path), "console=ttyS0")).unwrap();
        let (addr, size) = s.initrd.unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(addr % PAGE, 0);
        assert!(addr + size <= 64 << 20 && addr + size > (64 << 20) - 2 * PAGE);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert_eq!(back, data);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_and_oversized_initrds_are_named() {
        let (mem, layout) = memory(16);
        let image = elf64(&[0xf4], 0x20_0000, None);
        let missing = Path::new("/nonexistent/initrd.img");
        let e = setup(&mem, &layout, &cfg(&image, Some(missing), "")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/initrd.img"), "{e}");
        let big = temp_file("big-initrd", &vec![0u8; 20 << 20]);
        let e = setup(&mem, &layout, &cfg(&image, Some(&big), "")).unwrap_err();
        assert!(matches!(e, Error::InitrdTooLarge { .. }), "{e}");
        std::fs::remove_file(big).unwrap();
    }

    #[test]
    fn cmdline_is_written_nul_terminated_and_bounded() {
        let (mem, layout) = memory(16);
        let image = elf64(&[0xf4], 0x20_0000, None);
        let s = setup(&mem, &layout, &cfg(&image, None, "console=ttyS0 quiet")).unwrap();
        let mut b = [0u8; 20];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&b, b"console=ttyS0 quiet\0");
        assert!(matches!(s.entry, Entry::Linux64 { .. }));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let e = setup(&mem, &layout, &cfg(&image, None, &long)).unwrap_err();
        assert!(matches!(e, Error::CmdlineTooLong { .. }));
        let e = setup(&mem, &layout, &cfg(&image, None, "a\0b")).unwrap_err();
        assert!(matches!(e, Error::CmdlineNul));
    }

    #[test]
    fn pvh_entry_writes_start_info_and_a_32bit_gdt() {
        let (mem, layout) = memory(16);
        let image = elf64(&[0xf4], 0x20_0000, Some(0x20_0000));
        let s = setup(&mem, &layout, &cfg(&image, None, "")).unwrap();
        assert_eq!(
            s.entry,
            Entry::Pvh {
                rip: 0x20_0000,
                start_info: layout::PVH_INFO_ADDR
            }
        );
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 0x10)).unwrap();
        assert_eq!(code, gdt::CODE32);
    }
}
