//! Describing the machine to the guest with ACPI (`acpi_tables`):
//! RSDP → XSDT → FADT (hardware-reduced, with sleep and reset registers)
//! → DSDT (CPUs, devices, `\_S5`), and the MADT (LAPICs, IOAPIC, overrides).
//! A stock distribution kernel without MP-table support finds its CPUs and
//! its IOAPIC only here.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::legacy::power::{RESET_VALUE, S5_SLEEP_TYPE};
use crate::devices::legacy::{power, ACPI_POWER_PORT};
use crate::vm::layout::{ACPI_TABLES_ADDR, IOAPIC_ADDR, LAPIC_ADDR, RSDP_ADDR};
use crate::vm::GuestMemory;

const OEM_ID: [u8; 6] = *b"TSUBAM";
const OEM_TABLE_ID: [u8; 8] = *b"TSUBAME ";
const OEM_REVISION: u32 = 1;
/// The ACPI tables must stay below the MP configuration table.
pub const ACPI_TABLES_END: u64 = crate::boot::mptable::CONFIG_ADDR;

/// FADT IAPC_BOOT_ARCH: an 8042 (also described in the DSDT), no VGA, no
/// CMOS RTC.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT flags: dual 8259s present (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;

/// Hardware ID of a device in the DSDT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hid {
    /// A compressed EISA ID such as `PNP0501`.
    Eisa(&'static str),
    /// A string ID such as `LNRO0005`.
    String(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Io {
        base: u16,
        len: u8,
    },
    Mmio {
        base: u32,
        len: u32,
    },
    /// An edge-triggered, active-high interrupt (GSI).
    Irq(u32),
}

/// One device as the DSDT describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDescription {
    /// Four-character ACPI name.
    pub name: String,
    pub hid: Hid,
    pub uid: u32,
    pub resources: Vec<Resource>,
}

/// What the tables describe.
#[derive(Clone, Debug)]
pub struct AcpiConfig {
    pub cpus: u8,
    /// LAPICs and an IOAPIC exist (the MADT describes them); false with
    /// Tsubame's PIC, and then there is no MADT.
    pub apic: bool,
    pub devices: Vec<DeviceDescription>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area")]
    TooLarge(u64),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The IOAPIC's ID: after the last LAPIC ID, so the two never clash.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn hid_aml(hid: &Hid) -> Box<dyn Aml> {
    match hid {
        Hid::Eisa(id) => Box::new(aml::EISAName::new(id)),
        Hid::String(id) => Box::new(*id),
    }
}

fn device_aml(dev: &DeviceDescription) -> Vec<u8> {
    let io: Vec<Box<dyn Aml>> = dev
        .resources
        .iter()
        .map(|r| -> Box<dyn Aml> {
            match *r {
                Resource::Io { base, len } => Box::new(aml::IO::new(base, base, 1, len)),
                Resource::Mmio { base, len } => Box::new(aml::Memory32Fixed::new(true, base, len)),
                Resource::Irq(gsi) => Box::new(aml::Interrupt::new(true, true, false, false, gsi)),
            }
        })
        .collect();
    let crs = aml::ResourceTemplate::new(io.iter().map(|b| b.as_ref()).collect());
    let hid = hid_aml(&dev.hid);
    let hid_name = aml::Name::new("_HID".into(), hid.as_ref());
    let uid_name = aml::Name::new("_UID".into(), &dev.uid);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    aml_bytes(&aml::Device::new(
        dev.name.as_str().into(),
        vec![&hid_name, &uid_name, &crs_name],
    ))
}

fn cpu_aml(uid: u8) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid_value = uid as u32;
    let uid_name = aml::Name::new("_UID".into(), &uid_value);
    aml_bytes(&aml::Device::new(
        format!("C{uid:03X}").as_str().into(),
        vec![&hid, &uid_name],
    ))
}

/// The DSDT: every CPU and device under `\_SB`, and `\_S5` for power-off.
pub fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut sb = Vec::new();
    for uid in 0..cfg.cpus {
        sb.extend(cpu_aml(uid));
    }
    for dev in &cfg.devices {
        sb.extend(device_aml(dev));
    }
    let mut body = aml::Scope::raw("_SB_".into(), sb);
    let s5_type = S5_SLEEP_TYPE;
    let s5 = aml::Package::new(vec![&s5_type, &s5_type, &0u8, &0u8]);
    body.extend(aml_bytes(&aml::Name::new("_S5_".into(), &s5)));

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port as u64,
    )
}

/// The FADT of a hardware-reduced platform: no PM1 blocks, no SCI; sleep
/// control/status and reset are plain I/O registers.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch =
        (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    f.sleep_control_reg = io_register(ACPI_POWER_PORT + power::SLEEP_CONTROL as u16);
    f.sleep_status_reg = io_register(ACPI_POWER_PORT + power::SLEEP_STATUS as u16);
    f.reset_reg = io_register(ACPI_POWER_PORT + power::RESET as u16);
    f.reset_value = RESET_VALUE;
    aml_bytes(&f.finalize())
}

/// The MADT: one enabled LAPIC per vCPU, the IOAPIC, the PC's usual
/// override (ISA IRQ 0 → GSI 2) and LINT1 = NMI on every CPU.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        t.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    t.append_slice(&aml_bytes(&IoApic::new(
        ioapic_id(cpus),
        IOAPIC_ADDR as u32,
        0,
    )));
    // Interrupt source override: bus ISA, IRQ 0 → GSI 2, conforming.
    let mut iso = vec![MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0];
    iso.extend(2u32.to_le_bytes());
    iso.extend(0u16.to_le_bytes());
    t.append_slice(&iso);
    // Local APIC NMI: all processors (0xff), conforming, LINT1.
    t.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

/// Where each table landed; the RSDP is what the guest is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiAddresses {
    pub rsdp: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    pub dsdt: u64,
}

/// Builds every table and writes them into the BIOS area.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<AcpiAddresses, Error> {
    let mut next = ACPI_TABLES_ADDR;
    let mut place = |bytes: &[u8]| -> Result<u64, Error> {
        let addr = next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_TABLES_END {
            return Err(Error::TooLarge(end - ACPI_TABLES_ADDR));
        }
        mem.write_slice(bytes, GuestAddress(addr))?;
        next = (end + 7) & !7;
        Ok(addr)
    };
    let dsdt_addr = place(&dsdt(cfg))?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = if cfg.apic { place(&madt(cfg.cpus))? } else { 0 };
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    if cfg.apic {
        xsdt.add_entry(madt_addr);
    }
    let xsdt_addr = place(&aml_bytes(&xsdt))?;
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(RSDP_ADDR))?;
    Ok(AcpiAddresses {
        rsdp: RSDP_ADDR,
        xsdt: xsdt_addr,
        fadt: fadt_addr,
        madt: madt_addr,
        dsdt: dsdt_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::{COM1_IRQ, COM1_PORT};
    use crate::vm::layout::MemoryLayout;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn com1() -> DeviceDescription {
        DeviceDescription {
            name: "COM1".into(),
            hid: Hid::Eisa("PNP0501"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: COM1_PORT,
                    len: 8,
                },
                Resource::Irq(COM1_IRQ),
            ],
        }
    }

    fn config(cpus: u8) -> AcpiConfig {
        AcpiConfig {
            cpus,
            apic: true,
            devices: vec![
                com1(),
                DeviceDescription {
                    name: "VR00".into(),
                    hid: Hid::String("LNRO0005"),
                    uid: 0,
                    resources: vec![
                        Resource::Mmio {
                            base: 0xd000_0000,
                            len: 0x1000,
                        },
                        Resource::Irq(5),
                    ],
                },
            ],
        }
    }

    /// Walks the MADT's interrupt controller structures: (type, bytes).
    fn madt_entries(t: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < t.len() {
            let len = t[off + 1] as usize;
            out.push((t[off], t[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, t.len(), "structures fill the table exactly");
        out
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let cfg = config(2);
        for t in [dsdt(&cfg), fadt(0x1234), madt(2)] {
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(&t[0..4]));
            assert_eq!(u32_at(&t, 4) as usize, t.len());
        }
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_and_the_ioapic() {
        for cpus in [1u8, 2, 4, 17] {
            let t = madt(cpus);
            assert_eq!(&t[0..4], b"APIC");
            assert_eq!(u32_at(&t, 36), LAPIC_ADDR as u32);
            let entries = madt_entries(&t);
            let lapics: Vec<_> = entries.iter().filter(|(k, _)| *k == 0).collect();
            assert_eq!(lapics.len(), cpus as usize);
            for (i, (_, e)) in lapics.iter().enumerate() {
                assert_eq!((e[2], e[3]), (i as u8, i as u8), "uid and APIC ID");
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
            }
            let ioapics: Vec<_> = entries.iter().filter(|(k, _)| *k == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = &ioapics[0].1;
            assert_eq!(io[2], ioapic_id(cpus));
            assert_eq!(u32_at(io, 4), IOAPIC_ADDR as u32);
            assert_eq!(u32_at(io, 8), 0, "GSI base");
            let iso = &entries.iter().find(|(k, _)| *k == 2).unwrap().1;
            assert_eq!((iso[3], u32_at(iso, 4)), (0, 2), "IRQ0 -> GSI2");
            assert!(
                entries.iter().any(|(k, e)| *k == 4 && e[5] == 1),
                "LINT1 NMI"
            );
        }
    }

    #[test]
    fn fadt_points_at_dsdt_and_power_registers() {
        let t = fadt(0xe0100);
        assert_eq!(&t[0..4], b"FACP");
        // X_DSDT at offset 140.
        assert_eq!(u64_at(&t, 140), 0xe0100);
        let flags = u32_at(&t, 112);
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        // RESET_REG (GAS at 116) and RESET_VALUE (128).
        assert_eq!(t[116], 1, "system I/O");
        assert_eq!(u64_at(&t, 120), (ACPI_POWER_PORT + 2) as u64);
        assert_eq!(t[128], RESET_VALUE);
        // SLEEP_CONTROL_REG (GAS at 244), SLEEP_STATUS_REG (256).
        assert_eq!(u64_at(&t, 248), ACPI_POWER_PORT as u64);
        assert_eq!(u64_at(&t, 260), (ACPI_POWER_PORT + 1) as u64);
    }

    #[test]
    fn dsdt_names_devices_cpus_and_s5() {
        let t = dsdt(&config(3));
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        for name in [
            &b"_SB_"[..],
            b"COM1",
            b"VR00",
            b"LNRO0005",
            b"_S5_",
            b"C000",
            b"C002",
        ] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(b"C003"));
    }

    #[test]
    fn tables_are_linked_from_the_rsdp() {
        let layout = MemoryLayout::new(16).unwrap();
        let mem = GuestMemory::from_ranges(&layout.ranges()).unwrap();
        let a = write_tables(&mem, &config(2)).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(a.rsdp)).unwrap();
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[0..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(u64_at(&rsdp, 24), a.xsdt);
        let mut xsdt = [0u8; 52];
        mem.read_slice(&mut xsdt, GuestAddress(a.xsdt)).unwrap();
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        assert_eq!((u64_at(&xsdt, 36), u64_at(&xsdt, 44)), (a.fadt, a.madt));
        let mut fadt_hdr = [0u8; 148];
        mem.read_slice(&mut fadt_hdr, GuestAddress(a.fadt)).unwrap();
        assert_eq!(u64_at(&fadt_hdr, 140), a.dsdt);
        assert!(a.madt + madt(2).len() as u64 <= ACPI_TABLES_END);
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let layout = MemoryLayout::new(16).unwrap();
        let mem = GuestMemory::from_ranges(&layout.ranges()).unwrap();
        let mut cfg = config(1);
        cfg.devices = (0..4000)
            .map(|i| DeviceDescription {
                name: format!("D{i:03X}"),
                ..com1()
            })
            .collect();
        assert!(matches!(write_tables(&mem, &cfg), Err(Error::TooLarge(_))));
    }

    /// `iasl -d` (Debian's acpica-tools) must decompile the DSDT cleanly.
    #[test]
    fn iasl_decompiles_the_dsdt() {
        let dir = std::env::temp_dir().join(format!("tsubame-iasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dat = dir.join("dsdt.dat");
        std::fs::write(&dat, dsdt(&config(2))).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .output()
            .expect("iasl not found: install Debian's acpica-tools (.ci/run does)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for needle in [
            "Device (COM1)",
            "EisaId (\"PNP0501\")",
            "\"LNRO0005\"",
            "Device (C001)",
            "Name (_S5, Package",
            "IO (Decode16",
            "Memory32Fixed (ReadWrite",
        ] {
            assert!(dsl.contains(needle), "missing {needle} in\n{dsl}");
        }
    }
}
