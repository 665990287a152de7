//! The clock each exit's handling is timed with (the exit stats). Two
//! vDSO clock reads per exit were about 2 % of a PIO exit's cost on the
//! measured host; a TSC read is a few nanoseconds. The TSC is used where
//! the CPU says it ticks at a constant rate and KVM reports that rate.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClock {
    /// The TSC, `ns_per_tick` being 10^6 / its kHz in 32.32 fixed point,
    /// so a reading costs a multiply and a shift (a 128-bit division was
    /// about a tenth of Tsubame's own time per exit).
    Tsc {
        ns_per_tick: u64,
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
                ns_per_tick: ns_per_tick(u64::from(khz)),
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
            (ExitClock::Tsc { ns_per_tick }, Mark::Tsc(t)) => {
                // SAFETY: as in `now`.
                let ticks = unsafe { std::arch::x86_64::_rdtsc() }.saturating_sub(t);
                Duration::from_nanos(ticks_to_ns(ticks, ns_per_tick))
            }
            (_, Mark::At(at)) => at.elapsed(),
            (ExitClock::Monotonic, Mark::Tsc(_)) => Duration::ZERO,
        }
    }
}

/// 10^6 / khz in 32.32 fixed point; at most 10^6 << 32 (khz >= 1).
fn ns_per_tick(khz: u64) -> u64 {
    ((1_000_000u128 << 32) / u128::from(khz.max(1))) as u64
}

/// `ticks` at `ns_per_tick` (32.32 fixed point) in nanoseconds, at most
/// u64::MAX.
#[inline]
fn ticks_to_ns(ticks: u64, ns_per_tick: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(ns_per_tick)) >> 32;
    ns.min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed-point reading agrees with the exact division to within
    /// 1 ns per 10^8 (plus one for rounding) at any TSC rate up to 10 GHz,
    /// over a day of ticks; never above it, and within 10^-6 at the
    /// largest rate KVM can report (u32::MAX kHz).
    #[test]
    fn fixed_point_matches_division() {
        let rates = [
            1u64, 999, 1_000_000, 2_100_000, 2_999_999, 5_000_000, 10_000_000,
        ];
        for khz in rates.into_iter().chain([u64::from(u32::MAX)]) {
            let per_tick = ns_per_tick(khz);
            let slack = if khz <= 10_000_000 {
                100_000_000
            } else {
                1_000_000
            };
            for ticks in [0u64, 1, 3, 1_000, 123_456_789, 86_400 * khz * 1_000] {
                let exact = u128::from(ticks) * 1_000_000 / u128::from(khz);
                let exact = exact.min(u128::from(u64::MAX)) as u64;
                let got = ticks_to_ns(ticks, per_tick);
                assert!(
                    got <= exact && exact - got <= exact / slack + 1,
                    "{ticks} ticks at {khz} kHz: {got} ns, exactly {exact}"
                );
            }
        }
        assert_eq!(ticks_to_ns(u64::MAX, 1_000_000 << 32), u64::MAX, "clamped");
    }

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
