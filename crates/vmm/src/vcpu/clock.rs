//! The clock each exit's handling is timed with (the exit stats). Two
//! vDSO clock reads per exit were about 2 % of a PIO exit's cost on the
//! measured host; a TSC read is a few nanoseconds. The TSC is used where
//! the CPU says it ticks at a constant rate and KVM reports that rate.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClock {
    /// The TSC, at this many kHz.
    Tsc {
        khz: u64,
    },
    Monotonic,
}

/// A point in time on an [`ExitClock`].
#[derive(Clone, Copy, Debug)]
pub enum Mark {
    Tsc(u64),
    At(Instant),
}

/// CPUID leaf 0x8000_0007 EDX bit 8: the TSC's rate is invariant. Asked
/// once per process (a CPUID traps when Tsubame itself runs in a VM).
// `__cpuid` is a safe function in newer Rust, unsafe in older.
#[allow(unused_unsafe)]
fn invariant_tsc() -> bool {
    static INVARIANT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INVARIANT.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 0x8000_0000 says
        // whether the extended leaf asked next is there.
        let max = unsafe { __cpuid(0x8000_0000) }.eax;
        // SAFETY: as above; the leaf is within the reported range.
        max >= 0x8000_0007 && unsafe { __cpuid(0x8000_0007) }.edx & (1 << 8) != 0
    })
}

impl ExitClock {
    /// The TSC when it is invariant and `tsc_khz` (KVM_GET_TSC_KHZ) is
    /// known, else the monotonic clock.
    pub fn new(tsc_khz: Option<u32>) -> ExitClock {
        match tsc_khz {
            Some(khz) if khz > 0 && invariant_tsc() => ExitClock::Tsc {
                khz: u64::from(khz),
            },
            _ => ExitClock::Monotonic,
        }
    }

    #[inline]
    pub fn now(self) -> Mark {
        match self {
            // SAFETY: RDTSC has no preconditions (CR4.TSD is clear for
            // user space on Linux).
            ExitClock::Tsc { .. } => Mark::Tsc(unsafe { std::arch::x86_64::_rdtsc() }),
            ExitClock::Monotonic => Mark::At(Instant::now()),
        }
    }

    /// Time since `m`; zero if the TSC went backwards (a CPU migration on
    /// a host whose TSCs disagree).
    #[inline]
    pub fn since(self, m: Mark) -> Duration {
        match (self, m) {
            (ExitClock::Tsc { khz }, Mark::Tsc(t)) => {
                // SAFETY: as in `now`.
                let ticks = unsafe { std::arch::x86_64::_rdtsc() }.saturating_sub(t);
                let ns = u128::from(ticks) * 1_000_000 / u128::from(khz);
                Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
            }
            (_, Mark::At(at)) => at.elapsed(),
            (ExitClock::Monotonic, Mark::Tsc(_)) => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_measure_the_same_sleep() {
        // The TSC rate, measured: a stand-in for KVM_GET_TSC_KHZ. Each
        // (TSC, Instant) pair is read between two TSC reads, again if a
        // preemption came between them.
        let pair = || {
            for _ in 0..1000 {
                // SAFETY: RDTSC has no preconditions.
                let (before, at) = (unsafe { std::arch::x86_64::_rdtsc() }, Instant::now());
                // SAFETY: as above.
                let after = unsafe { std::arch::x86_64::_rdtsc() };
                if after - before < 100_000 {
                    return (before / 2 + after / 2, at);
                }
            }
            panic!("an Instant read took over 100,000 TSC ticks 1000 times in a row");
        };
        let (t0, i0) = pair();
        std::thread::sleep(Duration::from_millis(50));
        let (t1, i1) = pair();
        let khz = ((t1 - t0) as u128 * 1_000_000 / (i1 - i0).as_nanos()) as u32;
        let tsc = ExitClock::new(Some(khz));
        let (a, b) = (tsc.now(), ExitClock::Monotonic.now());
        std::thread::sleep(Duration::from_millis(20));
        let (by_tsc, by_instant) = (tsc.since(a), ExitClock::Monotonic.since(b));
        assert!(by_instant >= Duration::from_millis(20));
        let ratio = by_tsc.as_secs_f64() / by_instant.as_secs_f64();
        assert!(
            (0.9..1.1).contains(&ratio),
            "{tsc:?}: {by_tsc:?} against {by_instant:?}"
        );
        assert_eq!(ExitClock::new(None), ExitClock::Monotonic);
        assert_eq!(ExitClock::new(Some(0)), ExitClock::Monotonic);
    }
}
