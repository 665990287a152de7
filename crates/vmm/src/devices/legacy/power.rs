//! The hardware-reduced ACPI registers: sleep control (S5 = power off),
//! sleep status, and the reset register. The FADT points at them and the
//! DSDT's `\_S5` package names the sleep type, so a stock kernel's
//! `poweroff` and `reboot` end the VM.

use crate::devices::BusDevice;

pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;

/// SLP_TYPx value of S5 (soft off), as the DSDT's `\_S5` tells the guest.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the guest writes to the reset register (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x0f;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPower {
    on_poweroff: Box<dyn Fn() + Send>,
    on_reset: Box<dyn Fn() + Send>,
}

impl AcpiPower {
    pub fn new(on_poweroff: Box<dyn Fn() + Send>, on_reset: Box<dyn Fn() + Send>) -> AcpiPower {
        AcpiPower {
            on_poweroff,
            on_reset,
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing is ever pending: wake status stays clear.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        crate::limited!(Debug, "acpi-power: {value:#04x} written at +{offset}");
        match offset {
            SLEEP_CONTROL => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    (self.on_poweroff)();
                }
            }
            RESET if value == RESET_VALUE => (self.on_reset)(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn device() -> (AcpiPower, Arc<Mutex<Vec<&'static str>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (log.clone(), log.clone());
        let dev = AcpiPower::new(
            Box::new(move || a.lock().unwrap().push("off")),
            Box::new(move || b.lock().unwrap().push("reset")),
        );
        (dev, log)
    }

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let (mut d, log) = device();
        d.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(*log.lock().unwrap(), vec!["off"]);
    }

    #[test]
    fn other_sleep_states_and_values_are_ignored() {
        let (mut d, log) = device();
        d.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]); // SLP_EN clear
        d.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3
        d.write(RESET, &[0x01]);
        d.write(SLEEP_STATUS, &[0xff]);
        d.write(SLEEP_CONTROL, &[]);
        assert!(log.lock().unwrap().is_empty());
        let mut b = [0xaa];
        d.read(SLEEP_STATUS, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn reset_value_resets() {
        let (mut d, log) = device();
        d.write(RESET, &[RESET_VALUE]);
        assert_eq!(*log.lock().unwrap(), vec!["reset"]);
    }
}
