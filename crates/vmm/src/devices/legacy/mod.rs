//! PC legacy devices: what a stock kernel expects at fixed ports.

pub mod console_out;
pub mod i8042;
pub mod power;
pub mod serial;
pub mod sinks;

pub use i8042::{I8042State, I8042};
pub use power::AcpiPower;
pub use serial::{SerialConsole, SerialOutput, SerialState};
pub use sinks::PciConfigNoDevices;

/// COM1: ports and ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller: data and command/status ports, keyboard IRQ.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
pub const I8042_IRQ: u32 = 1;
/// Tsubame's ACPI sleep-control / sleep-status / reset registers.
pub const ACPI_POWER_PORT: u16 = 0x600;
pub const ACPI_POWER_LEN: u16 = 3;
