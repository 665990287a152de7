//! What the kernel is told at entry: the Linux zero page (`boot_params`)
//! for the 64-bit protocol, or PVH's `hvm_start_info`. Both carry the same
//! memory map, command line, initrd and RSDP.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::e820::E820Entry;
use crate::vm::layout::{
    PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use crate::vm::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader (0xff) per the boot protocol.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// Everything both protocols tell the kernel.
#[derive(Clone, Debug)]
pub struct BootInfo<'a> {
    pub cmdline_addr: u64,
    /// Length without the terminating NUL.
    pub cmdline_len: usize,
    pub initrd: Option<(u64, u64)>,
    pub e820: &'a [E820Entry],
    pub rsdp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the memory map has {0} entries, more than the boot protocol can carry")]
    TooManyE820(usize),
    #[error("cannot write boot parameters: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// The zero page: the kernel's own setup header (for a bzImage) or a
/// minimal one, plus our memory map, command line and initrd.
pub fn zero_page(info: &BootInfo, hdr: Option<setup_header>) -> Result<boot_params, Error> {
    if info.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820(info.e820.len()));
    }
    let mut p = boot_params {
        hdr: hdr.unwrap_or(setup_header {
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    p.ext_cmd_line_ptr = (info.cmdline_addr >> 32) as u32;
    p.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    p.acpi_rsdp_addr = info.rsdp;
    for (slot, e) in p.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    p.e820_entries = info.e820.len() as u8;
    Ok(p)
}

pub fn write_zero_page(mem: &GuestMemory, p: &boot_params) -> Result<u64, Error> {
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(p, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )?;
    Ok(ZERO_PAGE_ADDR)
}

/// PVH's `hvm_start_info`, its memory map and (for an initrd) module list.
pub fn write_pvh(mem: &GuestMemory, info: &BootInfo) -> Result<u64, Error> {
    if info.e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyE820(info.e820.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = info
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start, GuestAddress(PVH_INFO_ADDR));
    if let Some((addr, size)) = info.initrd {
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_ADDR;
        params = BootParams::new(&start, GuestAddress(PVH_INFO_ADDR));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: addr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_ADDR),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820;
    use crate::vm::layout::MemoryLayout;
    use vm_memory::{ByteValued, Bytes};

    fn info(map: &[E820Entry]) -> BootInfo<'_> {
        BootInfo {
            cmdline_addr: 0x20000,
            cmdline_len: 14,
            initrd: Some((0x7f0_0000, 0x12345)),
            e820: map,
            rsdp: 0xe0000,
        }
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_map_and_rsdp() {
        let layout = MemoryLayout::new(128).unwrap();
        let map = e820::build(&layout);
        let p = zero_page(&info(&map), None).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 14);
        assert_eq!({ p.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x12345);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries as usize, map.len());
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (0x10_0000, 127 << 20, 1)
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            init_size: 0x1234_0000,
            ..Default::default()
        };
        let p = zero_page(&info(&[]), Some(hdr)).unwrap();
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.init_size }, 0x1234_0000);
        assert_eq!(p.hdr.type_of_loader, 0xff);
    }

    #[test]
    fn pvh_start_info_in_memory() {
        let layout = MemoryLayout::new(64).unwrap();
        let mem = GuestMemory::from_ranges(&layout.ranges()).unwrap();
        let map = e820::build(&layout);
        let addr = write_pvh(&mem, &info(&map)).unwrap();
        let s: hvm_start_info = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(s.magic, XEN_HVM_START_MAGIC);
        assert_eq!(s.cmdline_paddr, 0x20000);
        assert_eq!(s.rsdp_paddr, 0xe0000);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(s.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x7f0_0000, 0x12345));
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                s.memmap_paddr
                    + (map.len() as u64 - 1)
                        * hvm_memmap_table_entry::default().as_slice().len() as u64,
            ))
            .unwrap();
        assert_eq!(last.addr, map.last().unwrap().addr);
    }

    #[test]
    fn oversized_maps_are_refused() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: e820::E820Type::Ram
            };
            200
        ];
        assert!(matches!(
            zero_page(&info(&map), None),
            Err(Error::TooManyE820(200))
        ));
    }
}
