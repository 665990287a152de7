//! A small stderr logger: time since start, level, module, message.

use crate::cli::LogLevel;

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = vmm::since_start().as_secs_f64();
        let target = r.target().trim_start_matches("vmm::");
        eprintln!("[{t:10.6} {:<5} {target}] {}", r.level(), r.args());
    }

    fn flush(&self) {}
}

pub fn init(level: LogLevel) {
    let filter = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(filter);
    }
}
