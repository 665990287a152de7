//! The Intel MultiProcessor Specification 1.4 table, for kernels built
//! without ACPI: CPUs, the ISA bus, the IOAPIC and the ISA interrupt
//! routing. The floating pointer sits at the start of the EBDA, where Linux
//! scans; the configuration table in the BIOS area.

use vm_memory::{Bytes, GuestAddress};

use crate::boot::acpi::ioapic_id;
use crate::vm::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};
use crate::vm::GuestMemory;

/// The configuration table: the upper half of the BIOS area, below the
/// reset vector.
pub const CONFIG_ADDR: u64 = 0xf0000;
const CONFIG_END: u64 = crate::vm::layout::RESET_VECTOR_ADDR;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6, with FPU and APIC feature bits.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 9) | 1;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const ISA_IRQS: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MP table for {0} CPUs does not fit in the BIOS area")]
    TooLarge(u8),
    #[error("cannot write the MP table: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The configuration table (header and entries) for `cpus` processors.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    count += 1;
    let ioapic = ioapic_id(cpus);
    entries.extend([ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // ISA IRQ n → IOAPIC pin n, except the timer on pin 2.
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic,
            pin,
        ]);
        count += 1;
    }
    // LINT0 = ExtINT (the 8259), LINT1 = NMI, on every LAPIC (0xff).
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        0,
    ]);
    entries.extend([
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ]);
    count += 2;

    let mut t = Vec::with_capacity(44 + entries.len());
    t.extend(b"PCMP");
    t.extend(((44 + entries.len()) as u16).to_le_bytes());
    t.push(SPEC_REV);
    t.push(0); // checksum
    t.extend(b"TSUBAME ");
    t.extend(b"TSUBAME-VM  ");
    t.extend(0u32.to_le_bytes()); // OEM table pointer
    t.extend(0u16.to_le_bytes()); // OEM table size
    t.extend(count.to_le_bytes());
    t.extend((LAPIC_ADDR as u32).to_le_bytes());
    t.extend(0u16.to_le_bytes()); // extended table length
    t.push(0); // extended table checksum
    t.push(0);
    t.extend(entries);
    t[7] = checksum(&t);
    t
}

/// The 16-byte floating pointer structure pointing at `config`.
pub fn floating_pointer(config: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0..4].copy_from_slice(b"_MP_");
    p[4..8].copy_from_slice(&config.to_le_bytes());
    p[8] = 1; // length in 16-byte units
    p[9] = SPEC_REV;
    p[10] = checksum(&p);
    p
}

pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), Error> {
    let table = config_table(cpus);
    if CONFIG_ADDR + table.len() as u64 > CONFIG_END {
        return Err(Error::TooLarge(cpus));
    }
    mem.write_slice(&table, GuestAddress(CONFIG_ADDR))?;
    mem.write_slice(
        &floating_pointer(CONFIG_ADDR as u32),
        GuestAddress(MPTABLE_ADDR),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::MemoryLayout;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_to_zero() {
        for cpus in [1, 2, 8, 64, 254] {
            let t = config_table(cpus);
            assert_eq!(sum(&t), 0);
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
        }
        assert_eq!(sum(&floating_pointer(CONFIG_ADDR as u32)), 0);
    }

    #[test]
    fn one_processor_entry_per_cpu_with_one_bsp() {
        let t = config_table(4);
        let count = u16::from_le_bytes([t[34], t[35]]) as usize;
        let mut off = 44;
        let mut cpus = Vec::new();
        for _ in 0..count {
            let len = if t[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            if t[off] == ENTRY_PROCESSOR {
                cpus.push((t[off + 1], t[off + 3]));
            }
            off += len;
        }
        assert_eq!(off, t.len());
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn written_where_linux_scans() {
        let mem = GuestMemory::from_ranges(&MemoryLayout::new(16).unwrap().ranges()).unwrap();
        write(&mem, 2).unwrap();
        let mut p = [0u8; 16];
        mem.read_slice(&mut p, GuestAddress(MPTABLE_ADDR)).unwrap();
        assert_eq!(&p[0..4], b"_MP_");
        assert_eq!(
            u32::from_le_bytes(p[4..8].try_into().unwrap()),
            CONFIG_ADDR as u32
        );
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(CONFIG_ADDR)).unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
