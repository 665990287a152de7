//! Phase marks of a machine's start, restore and stop: a name and the time since
//! `main()` ([`crate::mark_start`]), kept in a small fixed table and logged
//! together at the end (debug level), so that marking costs a clock read
//! and no I/O on the path it measures. `tsubame bench startup --phases`
//! reads them back.

use std::sync::Mutex;
use std::time::Duration;

/// Enough for one start and stop; later marks are dropped, not grown.
const CAPACITY: usize = 48;

struct Marks {
    at: [(&'static str, Duration); CAPACITY],
    len: usize,
}

static MARKS: Mutex<Marks> = Mutex::new(Marks {
    at: [("", Duration::ZERO); CAPACITY],
    len: 0,
});

/// Records that `phase` ended now.
pub fn mark(phase: &'static str) {
    let mut m = MARKS.lock().unwrap_or_else(|p| p.into_inner());
    // Read under the lock, so marks from several threads stay in order.
    let t = crate::since_start();
    if m.len < CAPACITY {
        let i = m.len;
        m.at[i] = (phase, t);
        m.len += 1;
    }
}

/// The marks so far, in order.
pub fn marks() -> Vec<(&'static str, Duration)> {
    let m = MARKS.lock().unwrap_or_else(|p| p.into_inner());
    m.at[..m.len].to_vec()
}

/// Logs every mark as `phase NAME MSms` (debug level).
pub fn report() {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for (name, t) in marks() {
        log::debug!("phase {name} {:.3}ms", t.as_secs_f64() * 1e3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Other tests in this process may mark too (machines they build):
    // only what holds whatever they add is checked.
    #[test]
    fn marks_are_kept_in_order_and_bounded() {
        for _ in 0..CAPACITY {
            mark("trace test");
        }
        mark("trace test, past the end");
        let m = marks();
        assert_eq!(m.len(), CAPACITY);
        assert!(m.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(m.iter().any(|(n, _)| *n == "trace test"));
        assert!(!m.iter().any(|(n, _)| *n == "trace test, past the end"));
    }
}
