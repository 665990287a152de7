//! Metrics in Firecracker's style: one JSON object a line, written to the
//! file or named pipe given by `--metrics-path` / `PUT /metrics`, on
//! `FlushMetrics` and every 60 s. Per-vCPU exit counts and handling-time
//! aggregates (`exit_io_in_agg`-like min/mean/max µs), API counters, uptime.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpu::stats::{ExitKind, ExitStats, Timing};

pub const PERIOD: Duration = Duration::from_secs(60);

/// API requests served and refused, counted by the VMM thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCounters {
    pub requests: u64,
    pub failures: u64,
}

pub struct MetricsWriter {
    file: File,
    timer: TimerFd,
    lines: u64,
}

impl MetricsWriter {
    /// Opens `path` for appending (a FIFO without waiting for a reader)
    /// and arms the periodic timer.
    pub fn open(path: &Path) -> std::io::Result<MetricsWriter> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let mut timer = TimerFd::new()?;
        timer.reset(PERIOD, Some(PERIOD))?;
        Ok(MetricsWriter {
            file,
            timer,
            lines: 0,
        })
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Clears the timer's expiry count after it fired.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
    }

    /// Writes one line. A full pipe drops the line (counted in `lines`
    /// only when written) rather than stall the VMM.
    pub fn write(&mut self, line: &Value) -> std::io::Result<()> {
        let mut s = line.to_string();
        s.push('\n');
        self.file.write_all(s.as_bytes())?;
        self.lines += 1;
        Ok(())
    }
}

fn key(kind: ExitKind) -> String {
    let name = kind.name().split(' ').next().unwrap_or("");
    format!("exit_{}", name.replace('-', "_"))
}

fn agg(t: &Timing) -> Value {
    json!({
        "count": t.count,
        "min_us": t.min_ns as f64 / 1e3,
        "mean_us": t.mean_ns() as f64 / 1e3,
        "max_us": t.max_ns as f64 / 1e3,
    })
}

/// One vCPU's exits: `{"exit_io_in": {"count":..,"min_us":..}, ...}`.
pub fn vcpu_value(id: usize, s: &ExitStats) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("exits".into(), json!(s.total_exits()));
    for (kind, t) in s.kinds() {
        m.insert(key(kind), agg(t));
    }
    if !s.completed.is_empty() {
        m.insert("emulation_repairs".into(), json!(s.completed));
    }
    // KVM_INTERRUPT from Tsubame's PIC (`--irqchip split|userspace`).
    if s.injections > 0 {
        m.insert("interrupts_injected".into(), json!(s.injections));
    }
    Value::Object(m)
}

pub use crate::devices::manager::DeviceCounters;

/// The whole line.
pub fn line(
    uptime: Duration,
    api: ApiCounters,
    state: &str,
    vcpus: &[ExitStats],
    devices: &[DeviceCounters],
) -> Value {
    let utc_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "utc_timestamp_ms": utc_ms,
        "uptime_ms": uptime.as_millis() as u64,
        "state": state,
        "api_server": { "requests": api.requests, "failures": api.failures },
        "vcpu": vcpus.iter().enumerate().map(|(i, s)| vcpu_value(i, s)).collect::<Vec<_>>(),
        "devices": devices
            .iter()
            .map(|(name, c)| (name.clone(), c.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect::<Map<_, _>>().into()))
            .collect::<Map<String, Value>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_per_vcpu_exit_aggregates() {
        let mut s = ExitStats::default();
        s.record(ExitKind::IoOut, None, Duration::from_micros(3));
        s.record(ExitKind::IoOut, None, Duration::from_micros(5));
        s.record(ExitKind::MmioRead, None, Duration::from_micros(7));
        let v = line(
            Duration::from_millis(1500),
            ApiCounters {
                requests: 4,
                failures: 1,
            },
            "Running",
            &[s, ExitStats::default()],
            &[("virtio-blk0".into(), vec![("reads", 7), ("errors", 0)])],
        );
        assert_eq!(v["uptime_ms"], 1500);
        assert_eq!(v["api_server"]["failures"], 1);
        let io = &v["vcpu"][0]["exit_io_out"];
        assert_eq!(io["count"], 2);
        assert_eq!(io["min_us"], 3.0);
        assert_eq!(io["mean_us"], 4.0);
        assert_eq!(io["max_us"], 5.0);
        assert_eq!(v["vcpu"][0]["exit_mmio_read"]["count"], 1);
        assert_eq!(v["vcpu"][1]["exits"], 0);
        assert_eq!(v["devices"]["virtio-blk0"]["reads"], 7);
    }

    #[test]
    fn lines_are_appended_to_the_file() {
        let dir = std::env::temp_dir().join(format!("tsubame-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let mut w = MetricsWriter::open(&dir).unwrap();
        w.write(&json!({"a": 1})).unwrap();
        w.write(&json!({"a": 2})).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        let _ = std::fs::remove_file(&dir);
    }
}
