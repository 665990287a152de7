//! The guest's physical memory map, as both the zero page (e820) and PVH's
//! `hvm_start_info` (memmap) describe it. Built once, from the layout.

use std::fmt;

use crate::vm::layout::{self, MemoryLayout};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    fn new(addr: u64, end: u64, kind: E820Type) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            kind,
        }
    }

    /// Last byte, inclusive, as Linux prints it.
    pub fn last(&self) -> u64 {
        self.addr + self.size - 1
    }
}

impl fmt::Display for E820Entry {
    /// The same shape as Linux's `BIOS-e820: [mem 0x…-0x…] usable` line.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match self.kind {
            E820Type::Ram => "usable",
            E820Type::Reserved => "reserved",
        };
        write!(f, "[mem {:#018x}-{:#018x}] {kind}", self.addr, self.last())
    }
}

/// RAM below the EBDA; everything from the EBDA to 1 MiB (MP table, the
/// legacy VGA/ROM hole, the BIOS area with the ACPI tables) reserved as one
/// range, as Linux would merge it anyway; RAM from 1 MiB to the hole; the
/// chipset range at the top of the hole (IOAPIC, LAPIC, KVM's pages); and
/// RAM above 4 GiB.
pub fn build(mem: &MemoryLayout) -> Vec<E820Entry> {
    use E820Type::*;
    let mut map = vec![
        E820Entry::new(0, layout::EBDA_START, Ram),
        E820Entry::new(layout::EBDA_START, layout::BIOS_END, Reserved),
        E820Entry::new(layout::HIMEM_START, mem.low_end(), Ram),
        E820Entry::new(layout::IOAPIC_ADDR, layout::MMIO_HOLE_END, Reserved),
    ];
    if let Some(&(start, size)) = mem.ram.get(1) {
        map.push(E820Entry::new(start.0, start.0 + size, Ram));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::{GIB, MIB};

    #[test]
    fn small_guest_map() {
        let map = build(&MemoryLayout::new(128).unwrap());
        let text: Vec<String> = map.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "[mem 0x0000000000000000-0x000000000009fbff] usable",
                "[mem 0x000000000009fc00-0x00000000000fffff] reserved",
                "[mem 0x0000000000100000-0x0000000007ffffff] usable",
                "[mem 0x00000000fec00000-0x00000000ffffffff] reserved",
            ]
        );
    }

    #[test]
    fn large_guest_map_has_ram_above_four_gib() {
        let mem = MemoryLayout::new(5 * 1024).unwrap();
        let map = build(&mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the EBDA and BIOS area is usable.
        assert_eq!(ram, 5 * GIB - (MIB - 0x9fc00));
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size), (4 * GIB, 2 * GIB));
        // Sorted and disjoint.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{:?}", w);
        }
        // No RAM inside the 32-bit hole.
        assert!(map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .all(|e| e.last() < 3 * GIB || e.addr >= 4 * GIB));
    }
}
