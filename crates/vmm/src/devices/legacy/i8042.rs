//! The i8042 keyboard controller, with just enough of a keyboard behind it
//! for Linux's probe (controller self-test, command byte, keyboard ID) to
//! succeed without timeouts, and for the CPU reset line.
//!
//! `vm-superio`'s `I8042Device` only models the reset line and answers every
//! read with 0, which makes Linux's probe wait out its timeouts; hence this
//! small model.

use std::collections::VecDeque;

use crate::devices::{BusDevice, IrqLine};

/// Offsets from the device's base (it is placed at 0x60 with length 5, so
/// 0x60 is the data port and 0x64 the command/status port).
const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const STS_OBF: u8 = 1 << 0;
const STS_SYS: u8 = 1 << 2;
const STS_CMD: u8 = 1 << 3;
const STS_UNLOCKED: u8 = 1 << 4;
const STS_AUXDATA: u8 = 1 << 5;

// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_XLATE: u8 = 1 << 6;

/// Bytes the output buffer holds at most (enough for a key sequence).
const OUT_MAX: usize = 16;

/// What the next byte on the data port means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pending {
    KeyboardCommand,
    KeyboardParameter,
    CommandByte,
    OutputPort,
    AuxLoop,
    AuxByte,
}

pub struct I8042 {
    ctr: u8,
    last_was_command: bool,
    pending: Pending,
    /// Output buffer: (byte, came from the AUX port).
    out: VecDeque<(u8, bool)>,
    last_read: u8,
    irq: IrqLine,
    on_reset: Box<dyn Fn() + Send>,
}

/// The controller's registers and output buffer, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub ctr: u8,
    pub last_was_command: bool,
    pub pending: Pending,
    pub out: Vec<(u8, bool)>,
    pub last_read: u8,
}

impl I8042 {
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            last_was_command: self.last_was_command,
            pending: self.pending,
            out: self.out.iter().copied().collect(),
            last_read: self.last_read,
        }
    }

    /// Takes a saved state (an output buffer longer than the controller
    /// holds is refused).
    pub fn restore(&mut self, s: &I8042State) -> Result<(), String> {
        if s.out.len() > OUT_MAX {
            return Err(format!(
                "i8042: {} bytes in the output buffer (at most {OUT_MAX})",
                s.out.len()
            ));
        }
        self.ctr = s.ctr;
        self.last_was_command = s.last_was_command;
        self.pending = s.pending;
        self.out = s.out.iter().copied().collect();
        self.last_read = s.last_read;
        Ok(())
    }

    /// `on_reset` runs when the guest pulses the CPU reset line.
    pub fn new(irq: IrqLine, on_reset: Box<dyn Fn() + Send>) -> I8042 {
        I8042 {
            ctr: CTR_KBD_INT | CTR_SYS | CTR_XLATE,
            last_was_command: false,
            pending: Pending::KeyboardCommand,
            out: VecDeque::new(),
            last_read: 0,
            irq,
            on_reset,
        }
    }

    fn push(&mut self, byte: u8) {
        // A guest that never reads cannot grow the buffer: the real
        // controller holds one byte; extra bytes are dropped.
        if self.out.len() >= OUT_MAX {
            return;
        }
        self.out.push_back((byte, false));
        self.raise_irq();
    }

    /// The keyboard reports Ctrl, Alt and Delete pressed, then released
    /// (Firecracker's `SendCtrlAltDel`): Linux's keyboard driver then
    /// calls `ctrl_alt_del()`, and init shuts the machine down. Scan code
    /// set 1 while the controller translates (as Linux leaves it), set 2
    /// otherwise.
    pub fn trigger_ctrl_alt_del(&mut self) {
        const SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
        const SET2: &[u8] = &[
            0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
        ];
        let seq = if self.ctr & CTR_XLATE != 0 {
            SET1
        } else {
            SET2
        };
        for &b in seq {
            self.push(b);
        }
    }

    /// Raises IRQ 1 when a keyboard byte is at the head of the buffer.
    fn raise_irq(&self) {
        if self.ctr & CTR_KBD_INT != 0 && matches!(self.out.front(), Some((_, false))) {
            let _ = self.irq.trigger();
        }
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if let Some(&(_, aux)) = self.out.front() {
            s |= STS_OBF;
            if aux {
                s |= STS_AUXDATA;
            }
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_was_command {
            s |= STS_CMD;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.push(self.ctr),
            0x60 => self.pending = Pending::CommandByte,
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            // AUX interface test: "clock line stuck low": no mouse here.
            0xa9 => self.push(0x01),
            // Controller self-test passed.
            0xaa => {
                self.ctr |= CTR_SYS;
                self.push(0x55);
            }
            // Keyboard interface test passed.
            0xab => self.push(0x00),
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            // Output port: bit 0 is the CPU reset line (active low).
            0xd0 => self.push(0x01),
            0xd1 => self.pending = Pending::OutputPort,
            // AUX loopback: takes a byte, see `Pending::AuxLoop`.
            0xd3 => self.pending = Pending::AuxLoop,
            0xd4 => self.pending = Pending::AuxByte,
            // Pulse output lines; bit 0 clear pulses reset.
            0xf0..=0xff if cmd & 1 == 0 => (self.on_reset)(),
            _ => {}
        }
    }

    fn keyboard(&mut self, byte: u8) {
        match self.pending {
            Pending::CommandByte => self.ctr = byte,
            Pending::OutputPort => {
                if byte & 1 == 0 {
                    (self.on_reset)();
                }
            }
            // Loopback returns the wrong byte: Linux then runs the AUX
            // interface test, which fails, and gives up on a mouse at once
            // (no timeouts).
            Pending::AuxLoop if self.out.len() < OUT_MAX => self.out.push_back((!byte, true)),
            Pending::AuxLoop => {}
            Pending::AuxByte => {}
            Pending::KeyboardParameter => self.push(0xfa),
            Pending::KeyboardCommand => match byte {
                // Set LEDs / scancode set / typematic rate: ACK, then a parameter.
                0xed | 0xf0 | 0xf3 => {
                    self.push(0xfa);
                    self.pending = Pending::KeyboardParameter;
                    return;
                }
                // Echo.
                0xee => self.push(0xee),
                // Identify: an MF2 keyboard.
                0xf2 => {
                    self.push(0xfa);
                    self.push(0xab);
                    self.push(if self.ctr & CTR_XLATE != 0 {
                        0x41
                    } else {
                        0x83
                    });
                }
                // Reset: ACK, then self-test passed.
                0xff => {
                    self.push(0xfa);
                    self.push(0xaa);
                }
                _ => self.push(0xfa),
            },
        }
        self.pending = Pending::KeyboardCommand;
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => {
                if let Some((b, _)) = self.out.pop_front() {
                    self.last_read = b;
                    // One edge per byte: announce the next one, if any.
                    self.raise_irq();
                }
                self.last_read
            }
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            DATA => {
                self.last_was_command = false;
                self.keyboard(byte);
            }
            COMMAND => {
                crate::limited!(Debug, "i8042: command {byte:#04x}");
                self.last_was_command = true;
                self.pending = Pending::KeyboardCommand;
                self.command(byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn device() -> (I8042, Arc<AtomicUsize>, IrqLine) {
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        let irq = IrqLine::new().unwrap();
        let probe = irq.try_clone().unwrap();
        let dev = I8042::new(
            irq,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, resets, probe)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let (mut d, _, _) = device();
        assert_ne!(rd(&mut d, COMMAND), 0xff, "controller present");
        d.write(COMMAND, &[0xaa]);
        assert_eq!(rd(&mut d, COMMAND) & STS_OBF, STS_OBF);
        assert_eq!(rd(&mut d, DATA), 0x55);
        assert_eq!(rd(&mut d, COMMAND) & STS_OBF, 0);
        // Read, then rewrite, the command byte.
        d.write(COMMAND, &[0x20]);
        let ctr = rd(&mut d, DATA);
        d.write(COMMAND, &[0x60]);
        d.write(DATA, &[ctr & !CTR_KBD_INT]);
        d.write(COMMAND, &[0x20]);
        assert_eq!(rd(&mut d, DATA), ctr & !CTR_KBD_INT);
        // AUX loop answers AUX data, but not the byte sent; AUX test fails:
        // no mouse.
        d.write(COMMAND, &[0xd3]);
        d.write(DATA, &[0x5a]);
        assert_eq!(
            rd(&mut d, COMMAND) & (STS_OBF | STS_AUXDATA),
            STS_OBF | STS_AUXDATA
        );
        assert_ne!(rd(&mut d, DATA), 0x5a);
        d.write(COMMAND, &[0xa9]);
        assert_eq!(rd(&mut d, DATA), 0x01);
        assert_eq!(rd(&mut d, COMMAND) & STS_OBF, 0);
    }

    #[test]
    fn keyboard_identifies_and_acks_with_interrupts() {
        let (mut d, _, irq) = device();
        d.write(DATA, &[0xf2]);
        assert!(irq.eventfd().unwrap().read().unwrap() >= 1);
        assert_eq!(rd(&mut d, DATA), 0xfa);
        assert_eq!(rd(&mut d, DATA), 0xab);
        assert_eq!(rd(&mut d, DATA), 0x41);
        // A command with a parameter is acknowledged twice.
        d.write(DATA, &[0xed]);
        d.write(DATA, &[0x07]);
        assert_eq!(rd(&mut d, DATA), 0xfa);
        assert_eq!(rd(&mut d, DATA), 0xfa);
        assert_eq!(rd(&mut d, COMMAND) & STS_OBF, 0);
    }

    #[test]
    fn reset_line_pulses_call_the_handler() {
        let (mut d, resets, _) = device();
        d.write(COMMAND, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        d.write(COMMAND, &[0xd1]);
        d.write(DATA, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        // Other pulses and writes do not reset.
        d.write(COMMAND, &[0xff]);
        d.write(DATA, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn ctrl_alt_del_is_pressed_then_released_in_the_translated_set() {
        let (mut d, _, irq) = device();
        d.trigger_ctrl_alt_del();
        assert!(irq.eventfd().unwrap().read().unwrap() >= 1);
        let got: Vec<u8> = (0..8).map(|_| rd(&mut d, DATA)).collect();
        assert_eq!(got, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        assert_eq!(rd(&mut d, COMMAND) & STS_OBF, 0);
        // Untranslated: scan code set 2.
        d.write(COMMAND, &[0x60]);
        d.write(DATA, &[CTR_KBD_INT]);
        d.trigger_ctrl_alt_del();
        assert_eq!([rd(&mut d, DATA), rd(&mut d, DATA)], [0x14, 0x11]);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut d, _, _) = device();
        for _ in 0..100_000 {
            d.write(COMMAND, &[0x20]);
            d.write(COMMAND, &[0xd3]);
            d.write(DATA, &[0x11]);
        }
        assert_eq!(d.out.len(), OUT_MAX);
    }
}
