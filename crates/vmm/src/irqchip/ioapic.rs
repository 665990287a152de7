//! The IOAPIC of `--irqchip split`: KVM keeps the LAPICs, Tsubame the
//! IOAPIC (82093AA register set, version 0x20, 24 pins). Its redirection
//! entries become MSI routes (KVM_SET_GSI_ROUTING, GSI = pin), so a
//! device's irqfd still reaches a LAPIC without a VMM exit. A level entry
//! in service keeps its Remote IRR until the LAPIC's EOI comes back as
//! KVM_EXIT_IOAPIC_EOI.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;

use crate::devices::BusDevice;

pub const PINS: usize = 24;
const VERSION: u32 = 0x20;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
/// Bits the guest cannot write: delivery status (12) and Remote IRR.
const READ_ONLY: u64 = (1 << 12) | REMOTE_IRR;

/// An MSI as KVM takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    pub address: u64,
    pub data: u32,
}

/// The message a redirection entry sends, or `None` when masked: the
/// destination (bits 56-63) and destination mode (11) go in the address,
/// vector (0-7), delivery mode (8-10) and trigger mode (15) in the data,
/// as Intel's MSI format has them.
pub fn message(entry: u64) -> Option<Msi> {
    if entry & MASKED != 0 {
        return None;
    }
    let dest = (entry >> 56) & 0xff;
    let logical = (entry >> 11) & 1;
    let address = 0xfee0_0000 | dest << 12 | logical << 2;
    let data = (entry & 0xff) as u32 | (((entry >> 8) & 7) as u32) << 8 | ((entry & LEVEL) as u32);
    Some(Msi { address, data })
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApicRegs {
    pub id: u32,
    pub select: u32,
    pub entries: [u64; PINS],
}

impl Default for IoApicRegs {
    fn default() -> IoApicRegs {
        IoApicRegs {
            id: 0,
            select: 0,
            entries: [MASKED; PINS],
        }
    }
}

impl IoApicRegs {
    fn read_window(&self) -> u32 {
        match self.select {
            0x00 => self.id << 24,
            0x01 => ((PINS as u32 - 1) << 16) | VERSION,
            0x02 => self.id << 24,
            r @ 0x10..=0x3f => {
                let e = self.entries[((r - 0x10) / 2) as usize];
                if r & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// An IOWIN write; the pin whose entry changed, if any.
    fn write_window(&mut self, value: u32) -> Option<usize> {
        match self.select {
            0x00 => {
                self.id = (value >> 24) & 0xf;
                None
            }
            r @ 0x10..=0x3f => {
                let pin = ((r - 0x10) / 2) as usize;
                let e = &mut self.entries[pin];
                let new = if r & 1 == 0 {
                    (*e & !0xffff_ffff) | u64::from(value)
                } else {
                    (*e & 0xffff_ffff) | u64::from(value) << 32
                };
                *e = (new & !READ_ONLY) | (*e & READ_ONLY);
                // An edge entry has no Remote IRR.
                if *e & LEVEL == 0 {
                    *e &= !REMOTE_IRR;
                }
                Some(pin)
            }
            _ => None,
        }
    }

    /// The LAPIC's EOI of `vector`: level entries with that vector leave
    /// service. Returns them.
    pub fn eoi(&mut self, vector: u8) -> Vec<usize> {
        let mut done = Vec::new();
        for (pin, e) in self.entries.iter_mut().enumerate() {
            if *e & REMOTE_IRR != 0 && (*e & 0xff) as u8 == vector {
                *e &= !REMOTE_IRR;
                done.push(pin);
            }
        }
        done
    }

    /// The GSI routing table: one MSI route per unmasked pin.
    pub fn routes(&self) -> Vec<kvm_irq_routing_entry> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(pin, &e)| {
                let m = message(e)?;
                let mut r = kvm_irq_routing_entry {
                    gsi: pin as u32,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                r.u.msi.address_lo = m.address as u32;
                r.u.msi.address_hi = (m.address >> 32) as u32;
                r.u.msi.data = m.data;
                Some(r)
            })
            .collect()
    }
}

/// The IOAPIC on the MMIO bus, with the VM whose routes it keeps.
pub struct IoApic {
    regs: Mutex<IoApicRegs>,
    vm: Arc<VmFd>,
}

impl IoApic {
    pub fn new(vm: Arc<VmFd>, id: u8) -> Arc<IoApic> {
        Arc::new(IoApic {
            regs: Mutex::new(IoApicRegs {
                id: u32::from(id),
                ..IoApicRegs::default()
            }),
            vm,
        })
    }

    pub(super) fn regs(&self) -> std::sync::MutexGuard<'_, IoApicRegs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn update_routes(&self, regs: &IoApicRegs) -> Result<(), String> {
        let routes = regs.routes();
        KvmIrqRouting::from_entries(&routes)
            .map_err(|e| format!("{e:?}"))
            .and_then(|table| self.vm.set_gsi_routing(&table).map_err(|e| e.to_string()))
            .map_err(|e| format!("ioapic: KVM_SET_GSI_ROUTING: {e}"))
    }

    /// A pulse on `pin` from Tsubame itself (the PIT's IRQ 0 arrives on
    /// pin 2, as the MADT's override says): sent as the pin's MSI.
    pub fn pulse(&self, pin: usize) {
        let msi = {
            let mut regs = self.regs();
            let Some(e) = regs.entries.get_mut(pin) else {
                return;
            };
            if *e & LEVEL != 0 {
                if *e & REMOTE_IRR != 0 {
                    return;
                }
                *e |= REMOTE_IRR;
            }
            message(*e)
        };
        if let Some(m) = msi {
            let msg = kvm_msi {
                address_lo: m.address as u32,
                address_hi: (m.address >> 32) as u32,
                data: m.data,
                ..Default::default()
            };

            if let Err(e) = self.vm.signal_msi(msg) {
                crate::limited!(Warn, "ioapic: KVM_SIGNAL_MSI for pin {pin}: {e}");
            }
        }
    }

    /// KVM_EXIT_IOAPIC_EOI.
    pub fn eoi(&self, vector: u8) {
        self.regs().eoi(vector);
    }
}

/// The register window as the bus sees it (`Arc<IoApic>` is shared with
/// the vCPU loop for EOIs and with the PIT).
pub struct IoApicMmio(pub Arc<IoApic>);

impl BusDevice for IoApicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let regs = self.0.regs();
        let value = match offset {
            IOREGSEL => regs.select,
            IOWIN => regs.read_window(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *b;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(b);
        let mut regs = self.0.regs();
        match offset {
            IOREGSEL => regs.select = value & 0xff,
            IOWIN if regs.write_window(value).is_some() => {
                if let Err(e) = self.0.update_routes(&regs) {
                    crate::limited!(Warn, "{e}");
                }
            }
            EOI => {
                regs.eoi(value as u8);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(r: &mut IoApicRegs, reg: u32, v: u32) -> Option<usize> {
        r.select = reg;
        r.write_window(v)
    }

    fn read(r: &mut IoApicRegs, reg: u32) -> u32 {
        r.select = reg;
        r.read_window()
    }

    #[test]
    fn version_id_and_masked_entries_after_reset() {
        let mut r = IoApicRegs::default();
        assert_eq!(read(&mut r, 1), 0x0017_0020, "24 entries, version 0x20");
        write(&mut r, 0, 0x0500_0000);
        assert_eq!(read(&mut r, 0), 0x0500_0000);
        for pin in 0..PINS as u32 {
            assert_eq!(read(&mut r, 0x10 + 2 * pin), 1 << 16, "pin {pin} masked");
        }
        assert!(r.routes().is_empty());
    }

    #[test]
    fn an_entry_becomes_an_msi_route() {
        let mut r = IoApicRegs::default();
        // Pin 4: vector 0x34, fixed, physical destination APIC 3, edge.
        assert_eq!(write(&mut r, 0x18, 0x34), Some(4));
        assert_eq!(write(&mut r, 0x19, 0x0300_0000), Some(4));
        let routes = r.routes();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].gsi, 4);
        assert_eq!(routes[0].type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: an MSI route's union member is `msi`.
        let msi = unsafe { routes[0].u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_3000, 0, 0x34)
        );
        // Logical destination 0x0f, lowest priority, level.
        let m = message(0x0f00_0000_0000_0000 | 1 << 15 | 1 << 11 | 1 << 8 | 0x41).unwrap();
        assert_eq!(m.address, 0xfee0_f004);
        assert_eq!(m.data, 0x8141);
        assert_eq!(message(MASKED | 0x41), None);
    }

    #[test]
    fn remote_irr_is_read_only_and_cleared_by_the_matching_eoi() {
        let mut r = IoApicRegs::default();
        write(&mut r, 0x10 + 2 * 9, (LEVEL as u32) | 0x49);
        r.entries[9] |= REMOTE_IRR;
        write(&mut r, 0x10 + 2 * 9, (LEVEL as u32) | 0x49);
        assert_ne!(r.entries[9] & REMOTE_IRR, 0, "the guest cannot clear it");
        assert!(r.eoi(0x48).is_empty());
        assert_eq!(r.eoi(0x49), vec![9]);
        assert_eq!(r.entries[9] & REMOTE_IRR, 0);
        // An unknown register reads 0 and writes nothing.
        assert_eq!(read(&mut r, 0x40), 0);
        assert_eq!(write(&mut r, 0x40, 1), None);
    }
}
