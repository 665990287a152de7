//! Tsubame's own work per exit, without KVM: synthetic PIO and MMIO exits
//! through the vCPU's `ExitHandler` (bus look-up, device lock, stats with
//! their clock, crash-report history). A KVM exit on an emulation-only
//! host costs microseconds and drifts by several percent between runs;
//! this part is the only one Tsubame's code decides, so it is timed on
//! its own, steadily, and set against the exit cost measured beside it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VcpuExit;
use vmm::devices::bus::{Bus, BusDevice};
use vmm::vcpu::clock::ExitClock;
use vmm::vcpu::exit::ExitHandler;

use super::{median, MMIO_ADDR};

/// A device that answers and does nothing else.
struct Idle;

impl BusDevice for Idle {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// Buses with the ranges a default machine has (PIC, PIT, i8042, RTC,
/// COM1, ACPI, PCI configuration, the POST-code and I/O-delay sinks;
/// virtio and the IOAPIC), so a look-up walks as far as it does in a
/// real VM.
fn buses() -> Result<(Bus, Bus), String> {
    let mut pio = Bus::new();
    for (name, base, len) in [
        ("pic master", 0x20, 2),
        ("pit", 0x40, 4),
        ("i8042 data", 0x60, 1),
        ("port 0x61", 0x61, 1),
        ("i8042 command", 0x64, 1),
        ("rtc", 0x70, 2),
        ("pic slave", 0xa0, 2),
        ("pic elcr", 0x4d0, 2),
        ("acpi", 0x600, 8),
        ("com1", 0x3f8, 8),
        ("pci-config", 0xcf8, 8),
    ] {
        pio.insert(name, base, len, Arc::new(Mutex::new(Idle)))
            .map_err(|e| e.to_string())?;
    }
    for (name, port) in [("post-code", 0x80), ("io-delay", 0xed)] {
        pio.insert_sink(name, port, 1).map_err(|e| e.to_string())?;
    }
    let mut mmio = Bus::new();
    for i in 0..4u64 {
        let base = MMIO_ADDR + 0x1000 + i * 0x1000;
        mmio.insert("virtio", base, 0x1000, Arc::new(Mutex::new(Idle)))
            .map_err(|e| e.to_string())?;
    }
    mmio.insert("ioapic", 0xfec0_0000, 0x1000, Arc::new(Mutex::new(Idle)))
        .map_err(|e| e.to_string())?;
    Ok((pio, mmio))
}

/// The TSC rate a vCPU would time its exits with (KVM_GET_TSC_KHZ).
fn vcpu_clock() -> Result<ExitClock, String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| e.to_string())?;
    let vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
    Ok(ExitClock::new(vcpu.get_tsc_khz().ok()))
}

/// Nanoseconds per synthetic exit: `out 0x80` (the POST-code sink, as
/// the guest loop's), a store to an unowned MMIO address (as the MMIO
/// loop's), an unowned port, and a device's port (COM1's scratch
/// register).
pub(crate) fn dispatch_ns(runs: usize) -> Result<[(&'static str, f64); 4], String> {
    const EXITS: u32 = 200_000;
    let (pio, mmio) = buses()?;
    let mut h = ExitHandler::new(Arc::new(pio), Arc::new(mmio), vcpu_clock()?);
    let mut time = |exit: &dyn Fn(&mut ExitHandler)| {
        let mut v = Vec::new();
        for _ in 0..runs.max(3) {
            let start = Instant::now();
            for _ in 0..EXITS {
                exit(&mut h);
            }
            v.push(start.elapsed().as_nanos() as f64 / f64::from(EXITS));
        }
        median(v)
    };
    let sink_pio = time(&|h| {
        std::hint::black_box(h.handle_io(VcpuExit::IoOut(0x80, &[0]), 1));
    });
    let unowned_pio = time(&|h| {
        std::hint::black_box(h.handle_io(VcpuExit::IoOut(0x81, &[0]), 1));
    });
    let unowned_mmio = time(&|h| {
        std::hint::black_box(h.handle(VcpuExit::MmioWrite(MMIO_ADDR, &[0; 4])));
    });
    let owned_pio = time(&|h| {
        std::hint::black_box(h.handle_io(VcpuExit::IoOut(0x3ff, &[0]), 1));
    });
    Ok([
        ("PIO, port 0x80 (a sink)", sink_pio),
        ("PIO, unowned port", unowned_pio),
        ("MMIO, unowned address", unowned_mmio),
        ("PIO, a device's port", owned_pio),
    ])
}
