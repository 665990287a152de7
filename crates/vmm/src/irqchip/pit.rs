//! The 8254 programmable interval timer: three channels counting at
//! 1.193182 MHz, all six modes, binary or BCD, LSB/MSB/word access,
//! counter latch and read-back commands, and channel 2's gate and output
//! on port 0x61 (Linux calibrates the TSC with it). Counter values come
//! from elapsed host time (`now`, in ns), never from ticks delivered, so a
//! guest reading the counter sees real time pass even when interrupts are
//! late. Channel 0's output drives IRQ 0.

/// The input clock, Hz.
pub const FREQ: u64 = 1_193_182;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Channel {
    /// The reload value in binary, 1..=65536 (a written 0 is 65536, or
    /// 10000 in BCD).
    pub count: u32,
    pub mode: u8,
    pub bcd: bool,
    /// 1: LSB only, 2: MSB only, 3: LSB then MSB.
    pub access: u8,
    /// Where the next count read and write are in a word access (false:
    /// the LSB).
    pub read_msb: bool,
    pub write_msb: bool,
    pub write_lsb: u8,
    /// When counting began, ns; `None` until a count is written after the
    /// control word.
    pub loaded_at: Option<u64>,
    /// Ticks counted while the gate held counting (modes 0 and 4).
    pub frozen_ticks: Option<u64>,
    pub gate: bool,
    /// A latched count (and how many bytes of it remain to read) and a
    /// latched status byte.
    pub latch: Option<(u16, u8)>,
    pub status: Option<u8>,
    /// Modes 1 and 5 wait for a gate edge before they count.
    pub triggered: bool,
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            count: 0x10000,
            mode: 0,
            bcd: false,
            access: 3,
            read_msb: false,
            write_msb: false,
            write_lsb: 0,
            loaded_at: None,
            frozen_ticks: None,
            gate,
            latch: None,
            status: None,
            triggered: false,
        }
    }

    /// Input clock ticks since counting began.
    fn ticks(&self, now: u64) -> Option<u64> {
        if let Some(t) = self.frozen_ticks {
            return Some(t);
        }
        let start = self.loaded_at?;
        if matches!(self.mode, 1 | 5) && !self.triggered {
            return None;
        }
        let elapsed = now.saturating_sub(start);
        Some(((u128::from(elapsed) * u128::from(FREQ)) / 1_000_000_000) as u64)
    }

    /// The counting element now (binary).
    fn counter(&self, now: u64) -> u32 {
        let count = u64::from(self.count);
        let Some(d) = self.ticks(now) else {
            return self.count & 0xffff;
        };
        let value = match self.mode {
            2 => count - d % count,
            // Square wave: decrements by two each clock.
            3 => count - (2 * d) % count,
            _ => {
                let modulus = if self.bcd { 10_000 } else { 0x10000 };
                (count + modulus - d % modulus) % modulus
            }
        };
        (value & 0xffff) as u32
    }

    /// The OUT pin now.
    pub fn out(&self, now: u64) -> bool {
        let count = u64::from(self.count);
        let Some(d) = self.ticks(now) else {
            // Before a count (or trigger), OUT is low only in mode 0.
            return self.mode != 0;
        };
        match self.mode {
            0 => d >= count,
            1 => d >= count,
            2 => !self.gate || d % count != count - 1,
            3 => !self.gate || d % count < count.div_ceil(2),
            _ => d != count,
        }
    }

    /// When OUT next rises strictly after `after` (ns), if it ever does.
    pub fn next_rise(&self, after: u64) -> Option<u64> {
        let start = self.loaded_at?;
        if self.frozen_ticks.is_some() || (matches!(self.mode, 1 | 5) && !self.triggered) {
            return None;
        }
        let count = u64::from(self.count);
        let d = self.ticks(after).unwrap_or(0);
        let tick = match self.mode {
            0 | 1 => (d < count).then_some(count),
            2 | 3 if self.gate => Some((d / count + 1) * count),
            4 | 5 => (d <= count).then_some(count + 1),
            _ => None,
        }?;
        // The first ns at which `ticks` reaches `tick`.
        let ns = (u128::from(tick) * 1_000_000_000).div_ceil(u128::from(FREQ));
        Some(start + ns as u64)
    }

    fn status_byte(&self, now: u64) -> u8 {
        u8::from(self.out(now)) << 7
            | u8::from(self.loaded_at.is_none()) << 6
            | self.access << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn load(&mut self, raw: u16, now: u64) {
        self.count = match (raw, self.bcd) {
            (0, false) => 0x10000,
            (0, true) => 10000,
            (v, false) => u32::from(v),
            (v, true) => from_bcd(v),
        };
        self.loaded_at = Some(now);
        self.frozen_ticks = None;
        self.triggered = false;
        if !self.gate && matches!(self.mode, 0 | 4) {
            self.frozen_ticks = Some(0);
        }
    }

    fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            let mut v = self.counter(now) as u16;
            if self.bcd {
                v = to_bcd(u32::from(v));
            }
            let bytes = if self.access == 3 { 2 } else { 1 };
            self.latch = Some((v, bytes));
        }
    }

    fn control(&mut self, value: u8) {
        let access = (value >> 4) & 3;
        self.access = access;
        self.mode = match (value >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        self.bcd = value & 1 != 0;
        self.read_msb = false;
        self.write_msb = false;
        self.loaded_at = None;
        self.frozen_ticks = None;
        self.latch = None;
        self.status = None;
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let one_byte = |v: u16, msb: bool| if msb { (v >> 8) as u8 } else { v as u8 };
        if let Some((v, left)) = self.latch {
            let msb = match self.access {
                2 => true,
                3 => left == 1,
                _ => false,
            };
            self.latch = (left > 1).then_some((v, left - 1));
            return one_byte(v, msb);
        }
        let mut v = self.counter(now) as u16;
        if self.bcd {
            v = to_bcd(u32::from(v));
        }
        match self.access {
            1 => one_byte(v, false),
            2 => one_byte(v, true),
            _ => {
                let msb = self.read_msb;
                self.read_msb = !msb;
                one_byte(v, msb)
            }
        }
    }

    fn write(&mut self, value: u8, now: u64) {
        match self.access {
            1 => self.load(u16::from(value), now),
            2 => self.load(u16::from(value) << 8, now),
            _ if !self.write_msb => {
                self.write_lsb = value;
                self.write_msb = true;
                // Mode 0 stops counting at the first byte of a new count.
                if self.mode == 0 && self.loaded_at.is_some() {
                    self.frozen_ticks = Some(0);
                    self.loaded_at = None;
                }
            }
            _ => {
                self.write_msb = false;
                self.load(u16::from(value) << 8 | u16::from(self.write_lsb), now);
            }
        }
    }

    fn set_gate(&mut self, level: bool, now: u64) {
        let rising = level && !self.gate;
        match self.mode {
            0 | 4 if level != self.gate => {
                if level {
                    // Resume: counting continues from where it held.
                    if let (Some(t), Some(_)) = (self.frozen_ticks.take(), self.loaded_at) {
                        // Rounded up, so the ticks counted from the new start
                        // are at least the ticks held.
                        let held_ns =
                            (u128::from(t) * 1_000_000_000).div_ceil(u128::from(FREQ)) as u64;
                        self.loaded_at = Some(now.saturating_sub(held_ns));
                    }
                } else {
                    self.frozen_ticks = self.ticks(now);
                }
            }
            1 | 5 if rising && self.loaded_at.is_some() => {
                self.loaded_at = Some(now);
                self.triggered = true;
            }
            2 | 3 if rising && self.loaded_at.is_some() => self.loaded_at = Some(now),
            _ => {}
        }
        self.gate = level;
    }
}

fn from_bcd(v: u16) -> u32 {
    (0..4).fold(0, |acc, i| {
        acc * 10 + u32::from((v >> (12 - 4 * i)) & 0xf).min(9)
    })
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10000;
    (0..4).fold(0, |acc, i| {
        acc | (((v / 10u32.pow(i)) % 10) as u16) << (4 * i)
    })
}

/// Three channels and port 0x61's speaker bits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    pub channels: [Channel; 3],
    /// Port 0x61 bit 1 (speaker data); no sound is made.
    pub speaker_data: bool,
}

impl Default for Pit {
    fn default() -> Pit {
        Pit {
            // Channels 0 and 1 are always gated on; channel 2's gate is
            // port 0x61 bit 0.
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker_data: false,
        }
    }
}

impl Pit {
    /// A read of port 0x40 + `channel` (0..=2).
    pub fn read(&mut self, channel: usize, now: u64) -> u8 {
        self.channels.get_mut(channel).map_or(0xff, |c| c.read(now))
    }

    /// A write of port 0x40 + `port` (0..=3; 3 is the control word).
    pub fn write(&mut self, port: usize, value: u8, now: u64) {
        match port {
            0..=2 => self.channels[port].write(value, now),
            3 => self.control(value, now),
            _ => {}
        }
    }

    fn control(&mut self, value: u8, now: u64) {
        let channel = usize::from(value >> 6);
        if channel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear statuses.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    c.latch_count(now);
                }
                if value & 0x10 == 0 && c.status.is_none() {
                    c.status = Some(c.status_byte(now));
                }
            }
        } else if value & 0x30 == 0 {
            self.channels[channel].latch_count(now);
        } else {
            self.channels[channel].control(value);
        }
    }

    /// Port 0x61: gate 2 (bit 0), speaker data (1), a refresh toggle (4,
    /// every 15 µs), OUT 2 (5).
    pub fn read_port61(&self, now: u64) -> u8 {
        let c = &self.channels[2];
        u8::from(c.gate)
            | u8::from(self.speaker_data) << 1
            | (((now / 15_085) & 1) as u8) << 4
            | u8::from(c.out(now)) << 5
    }

    pub fn write_port61(&mut self, value: u8, now: u64) {
        self.speaker_data = value & 2 != 0;
        self.channels[2].set_gate(value & 1 != 0, now);
    }

    /// When channel 0's OUT (IRQ 0) next rises after `after`.
    pub fn next_irq0(&self, after: u64) -> Option<u64> {
        self.channels[0].next_rise(after)
    }

    /// Whether a saved PIT (from a snapshot file) is one this code could
    /// have made, with its times no later than `clock_ns`: a count of 0
    /// or a time from the future would break the arithmetic above.
    pub fn check(&self, clock_ns: u64) -> Result<(), String> {
        for (i, c) in self.channels.iter().enumerate() {
            let bad = |what: String| Err(format!("PIT channel {i}: {what}"));
            if !(1..=0x10000).contains(&c.count) {
                return bad(format!("count {} outside 1..=65536", c.count));
            }
            if c.mode > 5 {
                return bad(format!("mode {}", c.mode));
            }
            if !(1..=3).contains(&c.access) {
                return bad(format!("access mode {}", c.access));
            }
            if c.loaded_at.is_some_and(|t| t > clock_ns) {
                return bad("counting began after the snapshot".into());
            }
            if c.latch.is_some_and(|(_, left)| left > 2) {
                return bad("a latch of more than two bytes".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "pit_tests.rs"]
mod tests;
