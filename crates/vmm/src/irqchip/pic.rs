//! The PC's pair of 8259A programmable interrupt controllers, as the
//! datasheet describes them: the slave cascaded on the master's IRQ2,
//! ICW1-4 initialisation, OCW1-3, edge or level inputs (ELCR), priority
//! with rotation, auto-EOI, specific and non-specific EOI, special mask,
//! poll mode, and the spurious IRQ 7 / 15 of an interrupt that vanished
//! before its acknowledge. A plain state machine: no clock, no KVM.

/// One 8259A.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pic8259 {
    pub irr: u8,
    pub isr: u8,
    pub imr: u8,
    /// Edge/level control (the PIIX ELCR): a set bit makes that input
    /// level-triggered.
    pub elcr: u8,
    /// Input levels as last seen, for edge detection.
    pub lines: u8,
    /// Vector of IRQ 0 (ICW2, low 3 bits clear).
    pub base: u8,
    /// The input with the lowest priority is `priority_add - 1`; rotation
    /// moves it.
    pub priority_add: u8,
    /// 0: ready; 1-3: expecting ICW2, ICW3, ICW4.
    pub init_step: u8,
    pub needs_icw4: bool,
    pub single: bool,
    pub auto_eoi: bool,
    pub rotate_on_auto_eoi: bool,
    pub special_mask: bool,
    /// ICW4 SFNM: a slave input in service does not block the slave's
    /// higher-priority inputs.
    pub special_fully_nested: bool,
    /// OCW3: the command port reads ISR (else IRR).
    pub read_isr: bool,
    /// OCW3 poll: the next command-port read acknowledges.
    pub poll: bool,
}

/// ELCR bits that can be set: IRQ 0, 1, 2 (master) and 8, 13 (slave)
/// are always edge-triggered on a PC.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

impl Pic8259 {
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        (0..8)
            .find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The input this chip would signal now: requested, unmasked, and of
    /// higher priority than every input in service.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let requested = self.priority(self.irr & !self.imr);
        if requested == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.special_fully_nested {
            in_service &= !(1 << 2);
        }
        (requested < self.priority(in_service)).then_some((requested + self.priority_add) & 7)
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let mask = 1 << irq;
        if self.elcr & mask != 0 {
            if level {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if level && self.lines & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.lines |= mask;
        } else {
            self.lines &= !mask;
        }
    }

    /// The INTA cycle for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let mask = 1 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        // A level input stays requested while it is asserted.
        if self.elcr & mask == 0 {
            self.irr &= !mask;
        }
    }

    /// ICW1: starts initialisation and forgets everything but the ELCR.
    fn reset(&mut self, icw1: u8) {
        *self = Pic8259 {
            elcr: self.elcr,
            irr: self.irr & self.elcr,
            init_step: 1,
            needs_icw4: icw1 & 1 != 0,
            single: icw1 & 2 != 0,
            ..Pic8259::default()
        };
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.reset(value);
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 1 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            // OCW2: R, SL, EOI in bits 7-5, the level in 2-0.
            let level = value & 7;
            match value >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                cmd @ (1 | 5) => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if cmd == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << level),
                6 => self.priority_add = (level + 1) & 7,
                7 => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            1 => {
                self.base = value & 0xf8;
                self.init_step = match (self.single, self.needs_icw4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            // ICW3: the cascade wiring is fixed on a PC.
            2 => self.init_step = if self.needs_icw4 { 3 } else { 0 },
            3 => {
                self.auto_eoi = value & 2 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }
}

/// Master and slave, wired as on every PC.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PicPair {
    pub chips: [Pic8259; 2],
}

impl Default for PicPair {
    /// At power-on nothing has been initialised: every input is masked
    /// until the guest's ICW1 (which clears the mask), so a device's
    /// early interrupt cannot arrive as vector 0 + IRQ (an exception).
    fn default() -> PicPair {
        let off = Pic8259 {
            imr: 0xff,
            ..Pic8259::default()
        };
        PicPair {
            chips: [off.clone(), off],
        }
    }
}

impl PicPair {
    /// Drives input `irq` (0-15) to `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        if irq >= 16 {
            return;
        }
        self.chips[usize::from(irq >> 3)].set_line(irq & 7, level);
        self.cascade();
    }

    /// A pulse on an edge-triggered input (a device's interrupt).
    pub fn pulse(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The slave's INT output is the master's IRQ2 input.
    fn cascade(&mut self) {
        let slave = self.chips[1].pending(false).is_some();
        self.chips[0].set_line(2, slave);
    }

    /// Whether the master's INT output is asserted.
    pub fn interrupt(&self) -> bool {
        self.chips[0].pending(true).is_some()
    }

    /// The INTA cycle: the vector the CPU receives. An interrupt gone
    /// before its acknowledge reads as the spurious IRQ 7 (master) or 15
    /// (slave), with nothing put in service.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.chips[0].pending(true) {
            Some(2) => {
                let vector = match self.chips[1].pending(false) {
                    Some(irq) => {
                        self.chips[1].acknowledge(irq);
                        self.chips[1].base + irq
                    }
                    None => self.chips[1].base + 7,
                };
                self.chips[0].acknowledge(2);
                vector
            }
            Some(irq) => {
                self.chips[0].acknowledge(irq);
                self.chips[0].base + irq
            }
            None => self.chips[0].base + 7,
        };
        self.cascade();
        vector
    }

    /// A read of port 0x20/0x21 (`chip` 0) or 0xa0/0xa1 (`chip` 1).
    pub fn read(&mut self, chip: usize, data_port: bool) -> u8 {
        let c = &mut self.chips[chip];
        if c.poll {
            c.poll = false;
            let value = match c.pending(chip == 0) {
                Some(irq) => {
                    c.acknowledge(irq);
                    0x80 | irq
                }
                None => 0,
            };
            self.cascade();
            return value;
        }
        match (data_port, c.read_isr) {
            (true, _) => c.imr,
            (false, true) => c.isr,
            (false, false) => c.irr,
        }
    }

    pub fn write(&mut self, chip: usize, data_port: bool, value: u8) {
        let c = &mut self.chips[chip];
        if data_port {
            c.write_data(value);
        } else {
            c.write_command(value);
        }
        self.cascade();
    }

    /// Whether a saved pair (from a snapshot file) is one this code could
    /// have made.
    pub fn check(&self) -> Result<(), String> {
        for (i, c) in self.chips.iter().enumerate() {
            let name = ["master", "slave"][i];
            if c.priority_add > 7 || c.init_step > 3 || c.base & 7 != 0 {
                return Err(format!(
                    "8259A {name}: priority {}, init step {}, base {:#x}",
                    c.priority_add, c.init_step, c.base
                ));
            }
        }
        Ok(())
    }

    /// ELCR port 0x4d0 (`chip` 0) or 0x4d1.
    pub fn read_elcr(&self, chip: usize) -> u8 {
        self.chips[chip].elcr
    }

    pub fn write_elcr(&mut self, chip: usize, value: u8) {
        self.chips[chip].elcr = value & ELCR_MASK[chip];
        self.cascade();
    }
}

#[cfg(test)]
#[path = "pic_tests.rs"]
mod tests;
