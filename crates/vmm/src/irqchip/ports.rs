//! The user-space chip on the port bus: the PICs (0x20-0x21, 0xa0-0xa1),
//! the ELCR (0x4d0-0x4d1), the PIT (0x40-0x43) and port 0x61.

use std::sync::{Arc, Mutex};

use super::UserChip;
use crate::devices::{bus, Bus, BusDevice};

#[derive(Clone, Copy)]
enum Ports {
    Pic(usize),
    Elcr,
    Pit,
    Port61,
}

struct ChipPorts {
    chip: Arc<UserChip>,
    ports: Ports,
}

impl BusDevice for ChipPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let off = offset as usize;
        let value = self.chip.with(false, |st, now| match self.ports {
            Ports::Pic(c) => st.pic.read(c, off == 1),
            Ports::Elcr => st.pic.read_elcr(off & 1),
            Ports::Pit => st.pit.read(off, now),
            Ports::Port61 => st.pit.read_port61(now),
        });
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (off, Some(&value)) = (offset as usize, data.first()) else {
            return;
        };
        let pit = matches!(self.ports, Ports::Pit | Ports::Port61);
        self.chip.with(pit, |st, now| match self.ports {
            Ports::Pic(c) => st.pic.write(c, off == 1, value),
            Ports::Elcr => st.pic.write_elcr(off & 1, value),
            Ports::Pit => st.pit.write(off, value, now),
            Ports::Port61 => st.pit.write_port61(value, now),
        });
    }
}

/// Puts the chip's ports on `pio`.
pub fn attach(chip: &Arc<UserChip>, pio: &mut Bus) -> Result<(), bus::Error> {
    for (name, base, len, ports) in [
        ("pic-master", 0x20, 2, Ports::Pic(0)),
        ("pic-slave", 0xa0, 2, Ports::Pic(1)),
        ("elcr", 0x4d0, 2, Ports::Elcr),
        ("pit", 0x40, 4, Ports::Pit),
        ("port61", 0x61, 1, Ports::Port61),
    ] {
        let dev = ChipPorts {
            chip: chip.clone(),
            ports,
        };
        pio.insert(name, base, len, Arc::new(Mutex::new(dev)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::handle::Wakeup;

    #[test]
    fn the_ports_reach_the_pic_and_the_pit() {
        let chip = UserChip::new(Arc::new(Wakeup::default()));
        let mut pio = Bus::new();
        attach(&chip, &mut pio).unwrap();
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 4),
            (0x21, 1),
            (0x21, 0xfe),
        ] {
            pio.write(port, &[v]);
        }
        let mut b = [0u8; 1];
        pio.read(0x21, &mut b);
        assert_eq!(b, [0xfe]);
        pio.write(0x4d1, &[0xff]);
        pio.read(0x4d1, &mut b);
        assert_eq!(b, [0xde]);
        // Channel 2 by port 0x61 and 0x42: mode 0, count 0x1234.
        pio.write(0x61, &[1]);
        pio.write(0x43, &[0xb0]);
        pio.write(0x42, &[0x34]);
        pio.write(0x42, &[0x12]);
        pio.write(0x43, &[0x80]); // latch channel 2
        let (mut lo, mut hi) = ([0u8], [0u8]);
        pio.read(0x42, &mut lo);
        pio.read(0x42, &mut hi);
        let v = u16::from(hi[0]) << 8 | u16::from(lo[0]);
        assert!(v <= 0x1234 && v > 0x1000, "{v:#x}");
        pio.read(0x61, &mut b);
        assert_eq!(b[0] & 0x21, 0x01, "gate on, OUT2 low");
        assert!(!chip.pending());
        chip.pulse(0);
        assert!(chip.pending());
    }
}
