//! Identity page tables for the 64-bit entry: the boot protocol enters
//! the kernel with paging on and virtual = physical for what it needs.

use vm_memory::{Bytes, GuestAddress};

use crate::vm::layout::{GIB, IDENTITY_MAP_SIZE, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::vm::GuestMemory;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;

/// Writes PML4 → PDPT → one PD per GiB mapping the first
/// [`IDENTITY_MAP_SIZE`] bytes with 2 MiB pages. Returns CR3.
pub fn write_identity_map(mem: &GuestMemory) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | PRESENT | WRITABLE, GuestAddress(PML4_ADDR))?;
    let gibs = IDENTITY_MAP_SIZE / GIB;
    for g in 0..gibs {
        let pd = PD_ADDR + g * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPT_ADDR + g * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| ((g * GIB + i * PAGE_2M) | PRESENT | WRITABLE | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::MemoryLayout;

    /// Walks the tables like the MMU would for a 2 MiB mapping.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 511) * 8))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & !(PAGE_2M - 1) & !(1 << 63)) | (va & (PAGE_2M - 1)))
    }

    #[test]
    fn maps_the_first_four_gib_one_to_one() {
        let layout = MemoryLayout::new(64).unwrap();
        let mem = GuestMemory::from_ranges(&layout.ranges()).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for va in [
            0,
            0x7000,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0020,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
