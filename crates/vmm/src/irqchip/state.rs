//! What a snapshot keeps of Tsubame's own chips (`--irqchip split`): the
//! PIC pair and the PIT with the chip's clock, and the IOAPIC's
//! registers. Each chip saves and restores itself; the restore checks a
//! state the way it checks anything read from a file.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::ioapic::{IoApic, IoApicRegs};
use super::{pic, pit, UserChip};

/// The PIC pair and the PIT. The PIT's times are on the chip's clock,
/// saved with them: the restored clock goes on from `clock_ns`, as the
/// guest's kvmclock goes on from the snapshot's instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChipState {
    pub pic: pic::PicPair,
    pub pit: pit::Pit,
    pub clock_ns: u64,
}

impl UserChip {
    pub fn save(&self) -> UserChipState {
        let st = self.lock();
        UserChipState {
            pic: st.pic.clone(),
            pit: st.pit.clone(),
            clock_ns: self.now(),
        }
    }

    /// Puts `s` in, with the clock set to its time; the timer then
    /// delivers the next edge from there (at most one coalesced edge for
    /// the time the machine stays paused, as after any pause).
    pub fn restore(&self, s: &UserChipState) -> Result<(), String> {
        s.pic.check()?;
        s.pit.check(s.clock_ns)?;
        let clock = i64::try_from(s.clock_ns).map_err(|_| "PIT clock out of range")?;
        let mut st = self.lock();
        let since = self.epoch.elapsed().as_nanos() as i64;
        self.clock_offset_ns
            .store(clock.saturating_sub(since), Ordering::Relaxed);
        st.pic = s.pic.clone();
        st.pit = s.pit.clone();
        st.woken = false;
        st.last_edge = s.clock_ns;
        self.run_timer(&mut st, s.clock_ns);
        self.signal(&mut st);
        Ok(())
    }
}

impl IoApic {
    pub fn save(&self) -> IoApicRegs {
        self.regs().clone()
    }

    /// Puts the registers back and routes the devices' GSIs by them again.
    pub fn restore(&self, saved: &IoApicRegs) -> Result<(), String> {
        let mut regs = self.regs();
        *regs = saved.clone();
        self.update_routes(&regs)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
