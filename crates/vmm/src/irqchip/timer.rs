//! The PIT's interrupts without a thread of their own: a timerfd set for
//! channel 0's next rising OUT, watched by the main loop. Whoever changes
//! the PIT (vCPU 0 at a port write, a restore) sets it again at once, and
//! the main loop's [`UserChip::tick`] delivers the edges due. Edges it was
//! too late for are coalesced into one, as the PIC's IRR would coalesce
//! them.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::{ChipState, UserChip};

impl UserChip {
    /// Makes the chip's timerfd (non-blocking: a timer set again between
    /// the main loop's wake-up and its read must not block the loop).
    pub fn start_timer(&self) -> std::io::Result<()> {
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        let fd = timer.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor `timer` owns; no memory
        // is passed.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        let mut st = self.lock();
        let now = self.now();
        st.last_edge = now;
        st.timer = Some(timer);
        self.run_timer(&mut st, now);
        Ok(())
    }

    /// The fd the main loop watches; `None` before [`Self::start_timer`].
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.lock().timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The timer fired: deliver the edges due and set it for the next.
    pub fn tick(&self) {
        let mut st = self.lock();
        if let Some(t) = st.timer.as_mut() {
            // Clears the expiry; EAGAIN when it was set again meanwhile.
            let _ = t.wait();
        }
        // Each edge delivered wakes vCPU 0 itself (`timer_edge`).
        let now = self.now();
        self.run_timer(&mut st, now);
    }

    /// Delivers channel 0's edges due by `now` (late ones as one) and sets
    /// the timer for the next edge, or stops it when none will come.
    pub(super) fn run_timer(&self, st: &mut ChipState, now: u64) {
        loop {
            match st.pit.next_irq0(st.last_edge) {
                Some(edge) if edge <= now => {
                    self.timer_edge(st);
                    st.last_edge = match st.pit.next_irq0(edge) {
                        Some(next) if next <= now => now,
                        _ => edge,
                    };
                }
                next => {
                    let Some(timer) = st.timer.as_mut() else {
                        return;
                    };
                    // A zero duration would disarm: the edge due now is
                    // one nanosecond away at the least.
                    let result = match next {
                        Some(edge) => timer.reset(Duration::from_nanos((edge - now).max(1)), None),
                        None => timer.clear(),
                    };
                    if let Err(e) = result {
                        crate::limited!(Warn, "pit: timerfd: {e}");
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::handle::Wakeup;
    use std::sync::Arc;
    use std::time::Instant;

    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one pollfd that lives for the call.
        let n = unsafe { libc::poll(&mut p, 1, 1000) };
        assert_eq!(n, 1, "the timer did not fire within 1 s");
    }

    fn auto_eoi_pic(chip: &UserChip) {
        chip.with(false, |st, _| {
            st.pic.write(0, false, 0x13);
            st.pic.write(0, true, 0x20);
            st.pic.write(0, true, 0x03); // auto-EOI: every edge is seen
            st.pic.write(0, true, 0xfe);
        });
    }

    #[test]
    fn a_periodic_pit_fires_the_timer_on_time_and_each_tick_raises_irq0() {
        let wakeup = Arc::new(Wakeup::default());
        let chip = UserChip::new(wakeup.clone());
        auto_eoi_pic(&chip);
        chip.start_timer().unwrap();
        let fd = chip.timer_fd().unwrap();
        // Mode 2 at ~1 kHz (1193 clocks).
        chip.with(true, |st, now| {
            st.pit.write(3, 0x34, now);
            st.pit.write(0, 0xa9, now);
            st.pit.write(0, 0x04, now);
        });
        let start = Instant::now();
        let mut ticks = 0;
        while ticks < 20 {
            wait_readable(fd);
            chip.tick();
            if chip.pending() {
                chip.acknowledge();
                ticks += 1;
            }
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(19),
            "{took:?} for 20 ticks of 1 ms"
        );
    }

    #[test]
    fn an_idle_pit_leaves_the_timer_unset() {
        let chip = UserChip::new(Arc::new(Wakeup::default()));
        auto_eoi_pic(&chip);
        chip.start_timer().unwrap();
        let armed = |c: &UserChip| c.lock().timer.as_ref().unwrap().is_armed().unwrap();
        assert!(!armed(&chip), "a PIT never programmed needs no timer");
        // One-shot (mode 0): one edge, then the timer stops. The longest
        // count (55 ms): a short one could expire before the check below
        // on a loaded host (16 clocks, 13 µs, failed in a CI rehearsal).
        chip.with(true, |st, now| {
            st.pit.write(3, 0x30, now);
            st.pit.write(0, 0xff, now);
            st.pit.write(0, 0xff, now);
        });
        assert!(armed(&chip));
        wait_readable(chip.timer_fd().unwrap());
        chip.tick();
        assert!(chip.pending());
        assert!(!armed(&chip), "no further edge: the timer is off");
    }
}
