//! The port devices as a guest drives them: COM1 (vm-superio's 8250 behind
//! Tsubame's console), the i8042 and the ACPI power registers, each access
//! 5 bytes of the input (device and direction, offset, size, value), with
//! console input arriving between accesses. Register sequences must never
//! panic, and every queue they can grow stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::legacy::i8042::I8042;
use vmm::devices::legacy::power::AcpiPower;
use vmm::devices::legacy::serial::{SerialConsole, SerialOutput};
use vmm::devices::{BusDevice, IrqLine};

fuzz_target!(|data: &[u8]| {
    let Ok(mut com1) = SerialConsole::new(IrqLine::new().unwrap(), SerialOutput::Sink) else {
        return;
    };
    let mut kbd = I8042::new(IrqLine::new().unwrap(), Box::new(|| {}));
    let mut power = AcpiPower::new(Box::new(|| {}), Box::new(|| {}));
    for op in data.chunks_exact(5) {
        let len = [1, 1, 2, 4][usize::from(op[2] & 3)];
        let mut value = [op[3], op[4], op[1], op[0]];
        let write = op[0] & 0x80 != 0;
        let dev: &mut dyn BusDevice = match op[0] % 3 {
            0 => &mut com1,
            1 => &mut kbd,
            _ => &mut power,
        };
        let offset = u64::from(op[1] & 0xf);
        if write {
            dev.write(offset, &value[..len]);
        } else {
            dev.read(offset, &mut value[..len]);
        }
        if op[2] & 0x80 != 0 {
            com1.enqueue_input(&op[3..]);
        }
    }
});
