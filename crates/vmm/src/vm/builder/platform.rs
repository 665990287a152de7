//! The platform devices every machine has (COM1, the i8042, the ACPI power
//! registers, the quiet ports), and the interrupt line a device gets.

use std::sync::{Arc, Mutex};

use super::Error;
use crate::boot::acpi::{DeviceDescription, Hid, Resource};
use crate::config::SerialConfig;
use crate::devices::legacy::{
    self, AcpiPower, PciConfigNoDevices, SerialConsole, SerialOutput, I8042,
};
use crate::devices::{bus, Bus, IrqLine};
use crate::irqchip::UserChip;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::vm::Vm;

/// The legacy devices and where they sit.
pub(super) struct Devices {
    pub(super) pio: Bus,
    pub(super) mmio: Bus,
    pub(super) com1: Arc<Mutex<SerialConsole>>,
    pub(super) serial: Option<Arc<Mutex<SerialConsole>>>,
    pub(super) i8042: Arc<Mutex<I8042>>,
    pub(super) acpi: Vec<DeviceDescription>,
}

/// The line for `gsi`: an irqfd with KVM's irqchip, else an input of
/// Tsubame's PIC (which has 16).
pub(super) fn register_irq(
    vm: &Vm,
    chip: Option<&Arc<UserChip>>,
    gsi: u32,
) -> Result<IrqLine, Error> {
    if let Some(chip) = chip {
        if gsi >= 16 {
            return Err(Error::PicInputs { gsi });
        }
        return Ok(IrqLine::Sink(chip.clone(), gsi));
    }
    let line = IrqLine::new()?;
    if let IrqLine::Irqfd(fd) = &line {
        vm.fd
            .register_irqfd(fd, gsi)
            .map_err(|source| Error::Irqfd { gsi, source })?;
    }
    Ok(line)
}

/// COM1, the i8042, the ACPI power registers, and the quiet sinks.
pub(super) fn attach_devices(
    vm: &Vm,
    chip: Option<&Arc<UserChip>>,
    lifecycle: &Arc<Lifecycle>,
    serial: &SerialConfig,
) -> Result<Devices, Error> {
    let mut pio = Bus::new();
    let stop = |reason: StopReason| -> Box<dyn Fn() + Send> {
        let l = lifecycle.clone();
        Box::new(move || {
            l.request_stop(reason.clone());
        })
    };

    let output = match serial {
        SerialConfig::Stdio => SerialOutput::Stdout,
        SerialConfig::None => SerialOutput::Sink,
        SerialConfig::File(path) => {
            SerialOutput::file(path).map_err(|source| Error::SerialFile {
                path: path.clone(),
                source,
            })?
        }
    };
    let com1 = Arc::new(Mutex::new(SerialConsole::new(
        register_irq(vm, chip, legacy::COM1_IRQ)?,
        output,
    )?));
    pio.insert("com1", legacy::COM1_PORT.into(), 8, com1.clone())?;

    let i8042 = Arc::new(Mutex::new(I8042::new(
        register_irq(vm, chip, legacy::I8042_IRQ)?,
        stop(StopReason::Reset),
    )));
    // Data on 0x60, status and command on 0x64; 0x61 is port B (the
    // PIT's, in KVM or in Tsubame).
    pio.insert("i8042", legacy::I8042_DATA_PORT.into(), 1, i8042.clone())?;
    pio.insert(
        "i8042",
        legacy::I8042_CMD_PORT.into(),
        1,
        Arc::new(Mutex::new(bus::Shifted {
            device: i8042.clone(),
            shift: u64::from(legacy::I8042_CMD_PORT - legacy::I8042_DATA_PORT),
        })),
    )?;
    pio.insert(
        "acpi-power",
        legacy::ACPI_POWER_PORT.into(),
        legacy::ACPI_POWER_LEN.into(),
        Arc::new(Mutex::new(AcpiPower::new(
            stop(StopReason::PowerOff),
            stop(StopReason::Reset),
        ))),
    )?;
    pio.insert_sink("post-code", 0x80, 1)?;
    pio.insert_sink("io-delay", 0xed, 1)?;
    pio.insert(
        "pci-config",
        0xcf8,
        8,
        Arc::new(Mutex::new(PciConfigNoDevices::default())),
    )?;

    let acpi = vec![
        DeviceDescription {
            name: "COM1".into(),
            hid: Hid::Eisa("PNP0501"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: legacy::COM1_PORT,
                    len: 8,
                },
                Resource::Irq(legacy::COM1_IRQ),
            ],
        },
        // Described, so a stock kernel's PNP probe finds the controller.
        DeviceDescription {
            name: "PS2K".into(),
            hid: Hid::Eisa("PNP0303"),
            uid: 0,
            resources: vec![
                Resource::Io {
                    base: legacy::I8042_DATA_PORT,
                    len: 1,
                },
                Resource::Io {
                    base: legacy::I8042_CMD_PORT,
                    len: 1,
                },
                Resource::Irq(legacy::I8042_IRQ),
            ],
        },
    ];
    Ok(Devices {
        pio,
        mmio: Bus::new(),
        serial: (*serial == SerialConfig::Stdio).then_some(com1.clone()),
        com1,
        i8042,
        acpi,
    })
}
