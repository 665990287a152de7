//! Where everything lives in guest-physical memory. One place, so the boot
//! code, ACPI tables and devices cannot disagree.

use vm_memory::GuestAddress;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Boot GDT and (empty) IDT, read by the vCPU before the guest sets its own.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, its module list and its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 64;
/// The Linux "zero page" (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Identity page tables for 64-bit entry: PML4, PDPT, then one PD per GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// How much the boot page tables map (2 MiB pages).
pub const IDENTITY_MAP_SIZE: u64 = 4 * GIB;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional memory; the MP table sits in the EBDA just below.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// The BIOS area (0xe0000–0xfffff) holds the RSDP and the ACPI tables.
pub const BIOS_START: u64 = 0xe0000;
pub const RSDP_ADDR: u64 = BIOS_START;
pub const ACPI_TABLES_ADDR: u64 = BIOS_START + 0x100;
pub const BIOS_END: u64 = 0x10_0000;
/// Where a CPU starts after reset (F000:FFF0), and where Linux's real-mode
/// restart jumps; [`crate::boot::reset_vector`] puts a reset there.
pub const RESET_VECTOR_ADDR: u64 = 0xffff0;
/// The first address a kernel or initrd may use.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole: RAM never lives in [3 GiB, 4 GiB).
pub const MMIO_HOLE_START: u64 = 3 * GIB;
pub const MMIO_HOLE_END: u64 = 4 * GIB;
/// Where virtio-mmio and other MMIO devices are placed, inside the hole.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const MMIO_DEVICES_END: u64 = 0xfe00_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Pages KVM needs for real-mode emulation on VT-x (inside the hole).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// Smallest and largest guest RAM we accept.
pub const MIN_MEMORY: u64 = 8 * MIB;
/// 1 TiB: well inside a 46-bit physical address space.
pub const MAX_MEMORY: u64 = 1 << 40;

// The fixed low-memory structures must not overlap; checked at compile time.
const _: () = {
    let pd_end = PD_ADDR + (IDENTITY_MAP_SIZE / GIB) * 0x1000;
    assert!(GDT_ADDR < IDT_ADDR && IDT_ADDR + 16 <= PVH_INFO_ADDR);
    assert!(PVH_MEMMAP_ADDR + (PVH_MEMMAP_MAX_ENTRIES as u64) * 24 <= ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + 0x1000 <= PML4_ADDR);
    assert!(pd_end <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= MPTABLE_ADDR);
    assert!(ACPI_TABLES_ADDR < RESET_VECTOR_ADDR && RESET_VECTOR_ADDR + 16 == BIOS_END);
    assert!(MMIO_DEVICES_END <= IOAPIC_ADDR);
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("memory size {0} MiB is too small: at least {min} MiB is needed", min = MIN_MEMORY / MIB)]
    TooSmall(u64),
    #[error("memory size {0} MiB is too large: at most {max} MiB is supported", max = MAX_MEMORY / MIB)]
    TooLarge(u64),
}

/// Guest RAM as one or two ranges around the 32-bit MMIO hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// (start, size) of each RAM range, ascending.
    pub ram: Vec<(GuestAddress, u64)>,
}

impl MemoryLayout {
    /// Lays out `mib` MiB of RAM: below 3 GiB first, the rest from 4 GiB up.
    pub fn new(mib: u64) -> Result<MemoryLayout, Error> {
        let size = mib.checked_mul(MIB).ok_or(Error::TooLarge(mib))?;
        if size < MIN_MEMORY {
            return Err(Error::TooSmall(mib));
        }
        if size > MAX_MEMORY {
            return Err(Error::TooLarge(mib));
        }
        let low = size.min(MMIO_HOLE_START);
        let mut ram = vec![(GuestAddress(0), low)];
        if size > low {
            ram.push((GuestAddress(MMIO_HOLE_END), size - low));
        }
        Ok(MemoryLayout { ram })
    }

    pub fn total(&self) -> u64 {
        self.ram.iter().map(|(_, s)| s).sum()
    }

    /// End of RAM below the hole (exclusive).
    pub fn low_end(&self) -> u64 {
        self.ram[0].1
    }

    /// The highest RAM address plus one.
    pub fn end(&self) -> u64 {
        self.ram
            .last()
            .map(|(start, size)| start.0 + size)
            .unwrap_or(0)
    }

    /// The ranges as `vm-memory` wants them.
    pub fn ranges(&self) -> Vec<(GuestAddress, usize)> {
        self.ram.iter().map(|&(a, s)| (a, s as usize)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        let l = MemoryLayout::new(128).unwrap();
        assert_eq!(l.ram, vec![(GuestAddress(0), 128 * MIB)]);
        assert_eq!(l.total(), 128 * MIB);
        assert_eq!(l.end(), 128 * MIB);
    }

    #[test]
    fn exactly_three_gib_needs_no_high_range() {
        let l = MemoryLayout::new(3072).unwrap();
        assert_eq!(l.ram.len(), 1);
        assert_eq!(l.low_end(), MMIO_HOLE_START);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let l = MemoryLayout::new(6 * 1024).unwrap();
        assert_eq!(
            l.ram,
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 3 * GIB)]
        );
        assert_eq!(l.total(), 6 * GIB);
        assert_eq!(l.end(), 7 * GIB);
        // Nothing of RAM inside the hole.
        for (start, size) in &l.ram {
            assert!(start.0 + size <= MMIO_HOLE_START || start.0 >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert_eq!(MemoryLayout::new(0), Err(Error::TooSmall(0)));
        assert_eq!(MemoryLayout::new(1), Err(Error::TooSmall(1)));
        assert_eq!(MemoryLayout::new(u64::MAX), Err(Error::TooLarge(u64::MAX)));
        assert_eq!(
            MemoryLayout::new(MAX_MEMORY / MIB + 1),
            Err(Error::TooLarge(MAX_MEMORY / MIB + 1))
        );
    }
}
