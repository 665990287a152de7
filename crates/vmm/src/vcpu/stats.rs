//! Exit statistics, kept per vCPU by its own thread (no sharing, so always
//! on) and merged at the end: how many exits of each kind, which device
//! handled them, and how long the handling took.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::devices::{Bus, DeviceIndex};

/// Why the vCPU left KVM_RUN, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    IrqWindowOpen,
    Intr,
    IoapicEoi,
    Kick,
    Shutdown,
    SystemEvent,
    InternalError,
    FailEntry,
    Debug,
    Wrmsr,
    Other,
}

impl ExitKind {
    pub const ALL: [ExitKind; 16] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::IrqWindowOpen,
        ExitKind::Intr,
        ExitKind::IoapicEoi,
        ExitKind::Kick,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::Debug,
        ExitKind::Wrmsr,
        ExitKind::Other,
    ];

    pub fn is_pio(self) -> bool {
        matches!(self, ExitKind::IoIn | ExitKind::IoOut)
    }

    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::IrqWindowOpen => "irq-window",
            ExitKind::Intr => "intr",
            ExitKind::IoapicEoi => "ioapic-eoi",
            ExitKind::Kick => "kick (EINTR)",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system-event",
            ExitKind::InternalError => "internal-error",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::Debug => "debug",
            ExitKind::Wrmsr => "wrmsr (filtered)",
            ExitKind::Other => "other",
        }
    }
}

/// Which device (or nobody) an I/O exit went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Pio(DeviceIndex),
    Mmio(DeviceIndex),
    UnownedPio(u64),
    UnownedMmio(u64),
}

/// Count and handling time of a set of exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub count: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Timing {
    pub fn add(&mut self, ns: u64) {
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.total_ns += ns;
    }

    pub fn merge(&mut self, o: &Timing) {
        if o.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 {
            o.min_ns
        } else {
            self.min_ns.min(o.min_ns)
        };
        self.max_ns = self.max_ns.max(o.max_ns);
        self.count += o.count;
        self.total_ns += o.total_ns;
    }

    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }
}

/// Unowned addresses are listed individually up to this many.
const MAX_UNOWNED_ADDRESSES: usize = 64;

/// Counted on every exit, so kept in fixed arrays indexed by exit kind and
/// by device index: no map look-up on the exit path. Only accesses nobody
/// owns (rare, bounded) and the repairs' names go to maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    by_kind: [Timing; ExitKind::ALL.len()],
    /// Indexed by the device's index on its bus; grown when first seen.
    pio: Vec<Timing>,
    mmio: Vec<Timing>,
    unowned: BTreeMap<Target, Timing>,
    /// Unowned accesses beyond the per-address limit.
    pub unowned_overflow: u64,
    /// What the VMM did for the guest on an emulation-only host:
    /// instructions completed or turned into exceptions (by mnemonic),
    /// repaired syscalls, page faults let through the breakpoint.
    pub completed: BTreeMap<String, u64>,
    /// Interrupts this vCPU injected with KVM_INTERRUPT (a user-space PIC).
    pub injections: u64,
}

fn slot(v: &mut Vec<Timing>, i: DeviceIndex) -> &mut Timing {
    if v.len() <= i {
        v.resize(i + 1, Timing::default());
    }
    &mut v[i]
}

impl ExitStats {
    /// Records one exit. Returns true the first time an unowned address is
    /// seen, so the caller can log it once.
    pub fn record(&mut self, kind: ExitKind, target: Option<Target>, took: Duration) -> bool {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        self.by_kind[kind as usize].add(ns);
        match target {
            None => false,
            Some(Target::Pio(i)) => {
                slot(&mut self.pio, i).add(ns);
                false
            }
            Some(Target::Mmio(i)) => {
                slot(&mut self.mmio, i).add(ns);
                false
            }
            Some(t) => {
                if let Some(timing) = self.unowned.get_mut(&t) {
                    timing.add(ns);
                    return false;
                }
                if self.unowned.len() >= MAX_UNOWNED_ADDRESSES {
                    self.unowned_overflow += 1;
                    return false;
                }
                self.unowned.entry(t).or_default().add(ns);
                true
            }
        }
    }

    pub fn record_completion(&mut self, what: String) {
        *self.completed.entry(what).or_default() += 1;
    }

    pub fn merge(&mut self, o: &ExitStats) {
        for (k, n) in &o.completed {
            *self.completed.entry(k.clone()).or_default() += n;
        }
        for (mine, theirs) in self.by_kind.iter_mut().zip(&o.by_kind) {
            mine.merge(theirs);
        }
        for (i, t) in o.pio.iter().enumerate() {
            slot(&mut self.pio, i).merge(t);
        }
        for (i, t) in o.mmio.iter().enumerate() {
            slot(&mut self.mmio, i).merge(t);
        }
        for (k, t) in &o.unowned {
            self.unowned.entry(*k).or_default().merge(t);
        }
        self.unowned_overflow += o.unowned_overflow;
        self.injections += o.injections;
    }

    pub fn total_exits(&self) -> u64 {
        self.by_kind.iter().map(|t| t.count).sum()
    }

    pub fn count(&self, kind: ExitKind) -> u64 {
        self.by_kind[kind as usize].count
    }

    /// The exit kinds seen, with their timings, in [`ExitKind::ALL`] order.
    pub fn kinds(&self) -> impl Iterator<Item = (ExitKind, &Timing)> {
        ExitKind::ALL
            .iter()
            .zip(&self.by_kind)
            .filter(|(_, t)| t.count > 0)
            .map(|(k, t)| (*k, t))
    }

    /// Every target seen (devices in index order, then unowned addresses).
    pub fn targets(&self) -> impl Iterator<Item = (Target, Timing)> + '_ {
        let pio = self
            .pio
            .iter()
            .enumerate()
            .map(|(i, t)| (Target::Pio(i), *t));
        let mmio = self
            .mmio
            .iter()
            .enumerate()
            .map(|(i, t)| (Target::Mmio(i), *t));
        pio.chain(mmio)
            .filter(|(_, t)| t.count > 0)
            .chain(self.unowned.iter().map(|(k, t)| (*k, *t)))
    }

    /// The timing of one target (zero if never seen).
    pub fn target(&self, t: Target) -> Timing {
        self.targets()
            .find(|(k, _)| *k == t)
            .map(|(_, timing)| timing)
            .unwrap_or_default()
    }

    /// A plain-text table: exits by reason, then by device.
    pub fn render(&self, title: &str, pio: &Bus, mmio: &Bus) -> String {
        let mut s = String::new();
        let row = |s: &mut String, name: &str, t: &Timing| {
            let _ = writeln!(
                s,
                "  {name:<34} {:>10} {:>9.2} {:>9.2} {:>10.2}",
                t.count,
                t.min_ns as f64 / 1e3,
                t.mean_ns() as f64 / 1e3,
                t.max_ns as f64 / 1e3
            );
        };
        let _ = writeln!(s, "{title}: {} exits", self.total_exits());
        let _ = writeln!(
            s,
            "  {:<34} {:>10} {:>9} {:>9} {:>10}",
            "exit reason", "count", "min µs", "mean µs", "max µs"
        );
        for (k, t) in self.kinds() {
            row(&mut s, k.name(), t);
        }
        if self.targets().next().is_some() {
            let _ = writeln!(
                s,
                "  {:<34} {:>10} {:>9} {:>9} {:>10}",
                "device (address)", "count", "min µs", "mean µs", "max µs"
            );
        }
        for (target, t) in self.targets() {
            let name = match target {
                Target::Pio(i) => pio.placement(i).map_or(format!("pio device {i}"), |p| {
                    format!("{} (port {:#x})", p.name, p.base)
                }),
                Target::Mmio(i) => mmio.placement(i).map_or(format!("mmio device {i}"), |p| {
                    format!("{} ({:#x})", p.name, p.base)
                }),
                Target::UnownedPio(a) => format!("unowned port {a:#x}"),
                Target::UnownedMmio(a) => format!("unowned mmio {a:#x}"),
            };
            row(&mut s, &name, &t);
        }
        if !self.completed.is_empty() {
            let _ = writeln!(s, "  {:<34} {:>10}", "handled by the VMM", "count");
            for (what, n) in &self.completed {
                let _ = writeln!(s, "  {what:<34} {n:>10}");
            }
        }
        if self.injections > 0 {
            let _ = writeln!(
                s,
                "  {:<34} {:>10}",
                "interrupts injected (KVM_INTERRUPT)", self.injections
            );
        }
        if self.unowned_overflow > 0 {
            let _ = writeln!(
                s,
                "  (and {} accesses to further unowned addresses)",
                self.unowned_overflow
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_slot() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}: ALL is in declaration order");
        }
        let mut s = ExitStats::default();
        s.record(ExitKind::Other, None, Duration::ZERO);
        s.record(ExitKind::IoIn, None, Duration::ZERO);
        assert_eq!((s.count(ExitKind::Other), s.count(ExitKind::IoIn)), (1, 1));
        assert_eq!(s.count(ExitKind::Hlt), 0);
        let kinds: Vec<ExitKind> = s.kinds().map(|(k, _)| k).collect();
        assert_eq!(kinds, [ExitKind::IoIn, ExitKind::Other]);
    }

    #[test]
    fn timing_tracks_min_mean_max() {
        let mut t = Timing::default();
        for ns in [500, 100, 300] {
            t.add(ns);
        }
        assert_eq!(
            (t.count, t.min_ns, t.mean_ns(), t.max_ns),
            (3, 100, 300, 500)
        );
        let mut u = Timing::default();
        u.add(50);
        t.merge(&u);
        assert_eq!((t.count, t.min_ns, t.max_ns), (4, 50, 500));
        let empty = Timing::default();
        assert_eq!(empty.mean_ns(), 0);
    }

    #[test]
    fn unowned_addresses_are_reported_once_and_bounded() {
        let mut s = ExitStats::default();
        let d = Duration::from_nanos(10);
        assert!(s.record(ExitKind::IoIn, Some(Target::UnownedPio(0x70)), d));
        assert!(!s.record(ExitKind::IoIn, Some(Target::UnownedPio(0x70)), d));
        for port in 0..100 {
            s.record(ExitKind::IoOut, Some(Target::UnownedPio(0x1000 + port)), d);
        }
        assert_eq!(s.unowned.len(), MAX_UNOWNED_ADDRESSES);
        assert_eq!(s.unowned_overflow, 100 - (MAX_UNOWNED_ADDRESSES as u64 - 1));
        assert_eq!(s.total_exits(), 102);
    }

    #[test]
    fn merge_and_render_name_devices() {
        let mut bus = Bus::new();
        bus.insert_sink("post-code", 0x80, 1).unwrap();
        let mut a = ExitStats::default();
        let mut b = ExitStats::default();
        a.record(
            ExitKind::IoOut,
            Some(Target::Pio(0)),
            Duration::from_micros(2),
        );
        b.record(
            ExitKind::IoOut,
            Some(Target::Pio(0)),
            Duration::from_micros(4),
        );
        b.record(ExitKind::Hlt, None, Duration::from_micros(1));
        a.merge(&b);
        assert_eq!(a.count(ExitKind::IoOut), 2);
        let text = a.render("total", &bus, &Bus::new());
        assert!(text.contains("total: 3 exits"), "{text}");
        assert!(text.contains("post-code (port 0x80)"), "{text}");
        assert!(text.contains("io-out"), "{text}");
    }
}
