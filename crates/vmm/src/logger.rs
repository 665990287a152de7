//! The log: time since start, level, module, message; to stderr, or to the
//! file or named pipe given by `--log-path` / `PUT /logger`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

struct Logger {
    /// `None`: stderr.
    file: Mutex<Option<File>>,
}

static LOGGER: Logger = Logger {
    file: Mutex::new(None),
};

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = crate::since_start();
        // virtio-queue logs what a guest's rings do wrong (a bad chain, an
        // invalid ring), once per occurrence: held to one budget here.
        if r.target().starts_with("virtio_queue") {
            match VIRTIO_QUEUE_LINES.admit(now) {
                None => return,
                Some(0) => {}
                Some(n) => self.write(
                    now,
                    r.level(),
                    "virtio_queue",
                    &format!("({n} more not logged)"),
                ),
            }
        }
        let target = r.target().trim_start_matches("vmm::");
        self.write(now, r.level(), target, &r.args().to_string());
    }

    fn flush(&self) {}
}

static VIRTIO_QUEUE_LINES: RateLimit = RateLimit::new();

impl Logger {
    fn write(&self, now: std::time::Duration, level: log::Level, target: &str, msg: &str) {
        let t = now.as_secs_f64();
        let line = format!("[{t:10.6} {level:<5} {target}] {msg}\n");
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            // A full pipe drops the line rather than stall the thread.
            Some(f) => drop(f.write_all(line.as_bytes())),
            None => drop(std::io::stderr().write_all(line.as_bytes())),
        }
    }
}

/// Installs the logger (once) and sets the level.
pub fn init(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Sends the log to `path` from now on: a file (appended to, created if
/// missing) or a named pipe (opened without blocking on a reader).
pub fn set_path(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    *LOGGER.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// A level name as Firecracker's API and flags take it (any case):
/// Error, Warning (or Warn), Info, Debug, Trace, Off.
pub fn parse_level(s: &str) -> Option<log::LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        "off" => log::LevelFilter::Off,
        _ => return None,
    })
}

/// A budget for one log line that a guest can trigger at will: at most
/// `BURST` lines per `WINDOW`; what is held back is counted and said with
/// the next line let through. Use through [`limited!`](crate::limited).
pub struct RateLimit {
    state: Mutex<Window>,
}

struct Window {
    start: Option<std::time::Duration>,
    lines: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const BURST: u32 = 10;
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    pub const fn new() -> RateLimit {
        RateLimit {
            state: Mutex::new(Window {
                start: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed so far)` when a line may go out at `now` (time
    /// since start), `None` when it is to be held back.
    pub fn admit(&self, now: std::time::Duration) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_sub(s) >= Self::WINDOW)
        {
            w.start = Some(now);
            w.lines = 0;
        }
        if w.lines >= Self::BURST {
            w.suppressed += 1;
            return None;
        }
        w.lines += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

/// `log::<level>!` for a line a guest can trigger: rate-limited per call
/// site (see [`RateLimit`]).
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::logger::RateLimit = $crate::logger::RateLimit::new();
        if log::log_enabled!(log::Level::$level) {
            if let Some(n) = LIMIT.admit($crate::since_start()) {
                if n > 0 {
                    log::log!(log::Level::$level, "({n} more like the next line were not logged)");
                }
                log::log!(log::Level::$level, $($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_line_is_held_to_its_burst_per_window() {
        use std::time::Duration;
        let l = RateLimit::new();
        let t0 = Duration::from_secs(100);
        let let_through = (0..1000).filter(|_| l.admit(t0).is_some()).count();
        assert_eq!(let_through, RateLimit::BURST as usize);
        // The next window lets lines through again and says what was held.
        let later = t0 + RateLimit::WINDOW;
        assert_eq!(l.admit(later), Some(1000 - u64::from(RateLimit::BURST)));
        assert_eq!(l.admit(later), Some(0));
    }

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(parse_level("Warning"), Some(log::LevelFilter::Warn));
        assert_eq!(parse_level("DEBUG"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level("off"), Some(log::LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
