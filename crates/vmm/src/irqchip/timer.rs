//! The PIT's interrupts: a thread that sleeps until channel 0's OUT next
//! rises, pulses IRQ 0, and sleeps again; it is woken early when the
//! guest reprograms the PIT. Edges it was too late for are coalesced into
//! one, as the PIC's IRR would coalesce them.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::UserChip;

/// The running timer thread; dropping it stops and joins it.
pub struct PitTimer {
    chip: Arc<UserChip>,
    thread: Option<JoinHandle<()>>,
}

impl PitTimer {
    pub fn spawn(chip: Arc<UserChip>) -> std::io::Result<PitTimer> {
        let c = chip.clone();
        let thread = std::thread::Builder::new()
            .name("pit".into())
            .spawn(move || {
                if let Err(e) = crate::confine::install(crate::confine::ThreadKind::Timer) {
                    log::error!("pit: {e}");
                    return;
                }
                run(&c);
            })?;
        Ok(PitTimer {
            chip,
            thread: Some(thread),
        })
    }
}

impl Drop for PitTimer {
    fn drop(&mut self) {
        self.chip.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(chip: &UserChip) {
    let mut st = chip.lock();
    // The last edge delivered (or the start).
    let mut last = chip.now();
    while !st.stopped {
        let now = chip.now();
        match st.pit.next_irq0(last) {
            Some(edge) if edge <= now => {
                chip.timer_edge(&mut st);
                last = match st.pit.next_irq0(edge) {
                    Some(next) if next <= now => now,
                    _ => edge,
                };
            }
            Some(edge) => {
                let wait = Duration::from_nanos(edge - now);
                st = chip
                    .timer
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => st = chip.timer.wait(st).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::handle::Wakeup;
    use std::time::Instant;

    #[test]
    fn a_periodic_pit_raises_irq0_on_time_and_stops_when_dropped() {
        let wakeup = Arc::new(Wakeup::default());
        let chip = UserChip::new(wakeup.clone());
        chip.with(false, |st, _| {
            st.pic.write(0, false, 0x13);
            st.pic.write(0, true, 0x20);
            st.pic.write(0, true, 0x03); // auto-EOI: every edge is seen
            st.pic.write(0, true, 0xfe);
        });
        let timer = PitTimer::spawn(chip.clone()).unwrap();
        // Mode 2 at ~1 kHz (1193 clocks).
        chip.with(true, |st, now| {
            st.pit.write(3, 0x34, now);
            st.pit.write(0, 0xa9, now);
            st.pit.write(0, 0x04, now);
        });
        let start = Instant::now();
        let mut ticks = 0;
        while ticks < 20 {
            wakeup.wait();
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
        drop(timer);
        assert!(chip.lock().stopped);
    }
}
