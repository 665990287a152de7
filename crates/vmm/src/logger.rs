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
        let t = crate::since_start().as_secs_f64();
        let target = r.target().trim_start_matches("vmm::");
        let line = format!("[{t:10.6} {:<5} {target}] {}\n", r.level(), r.args());
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            // A full pipe drops the line rather than stall the thread.
            Some(f) => drop(f.write_all(line.as_bytes())),
            None => drop(std::io::stderr().write_all(line.as_bytes())),
        }
    }

    fn flush(&self) {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(parse_level("Warning"), Some(log::LevelFilter::Warn));
        assert_eq!(parse_level("DEBUG"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level("off"), Some(log::LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
