//! Step 3 of a VM's life: what to do with each exit from KVM_RUN. A plain
//! function of the exit and the buses, so it is tested with synthetic exits
//! and no guest. New exit reasons go here.

use super::clock::ExitClock;
use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use super::stats::{ExitKind, ExitStats, Target};
use crate::devices::{Bus, DeviceIndex};
use crate::lifecycle::StopReason;

/// A guest death the VMM can see; the run loop turns it into a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// KVM_EXIT_SHUTDOWN: triple fault.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR; the details are in `kvm_run`.
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused the guest state.
    FailEntry { reason: u64, cpu: u32 },
    /// A KVM_SYSTEM_EVENT_CRASH (the guest reported a panic).
    GuestPanic,
    /// An exit Tsubame does not handle.
    Unexpected(String),
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Fatal::Shutdown => write!(f, "KVM_EXIT_SHUTDOWN (triple fault)"),
            Fatal::InternalError => write!(f, "KVM_EXIT_INTERNAL_ERROR"),
            Fatal::FailEntry { reason, cpu } => write!(
                f,
                "KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            ),
            Fatal::GuestPanic => write!(f, "KVM_SYSTEM_EVENT_CRASH (guest panic)"),
            Fatal::Unexpected(what) => write!(f, "unexpected exit {what}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Back into KVM_RUN.
    Continue,
    /// The guest executed HLT (KVM has no irqchip to wait in).
    Halt,
    /// A LAPIC's EOI of a vector a user-space IOAPIC routes (`split`).
    IoapicEoi(u8),
    /// The guest ended the machine itself.
    Stop(StopReason),
    /// The guest died; report and stop.
    Fatal(Fatal),
    /// A guest-debug exception (KVM_EXIT_DEBUG) at `pc`: only the vCPU
    /// loop knows whether it set a breakpoint there.
    Debug { pc: u64 },
    /// A WRMSR stopped by the MSR filter, accepted: the vCPU loop must
    /// perform it (KVM did not).
    WriteMsr { index: u32, data: u64 },
}

/// One I/O exit, remembered for crash reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: ExitKind,
    pub addr: u64,
    pub value: u64,
    pub len: usize,
}

/// How many recent I/O exits a crash report shows.
pub const HISTORY: usize = 24;
/// COM1's ports: console traffic would flush everything else out of the
/// history, so it is left out.
const CONSOLE_PORTS: std::ops::Range<u64> = 0x3f8..0x400;

/// The bytes of one port access in a PIO exit of `len` bytes whose
/// accesses are `size` bytes each (1, 2 or 4; anything else: one access).
fn pio_chunk(size: usize, len: usize) -> usize {
    match size {
        1 | 2 | 4 if len.is_multiple_of(size) => size,
        _ => len.max(1),
    }
}

/// Dispatches exits to the PIO and MMIO buses and counts them.
pub struct ExitHandler {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// Bytes per port access of the exit being handled (`kvm_run.io.size`):
    /// a string instruction (`rep insb`) comes as one exit of size × count
    /// bytes, carried out as count accesses. 0: the whole buffer is one.
    pio_size: usize,
    pub stats: ExitStats,
    /// What each exit's handling is timed with.
    clock: ExitClock,
    history: [Option<Access>; HISTORY],
    next: usize,
}

impl ExitHandler {
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>, clock: ExitClock) -> ExitHandler {
        ExitHandler {
            pio,
            mmio,
            stats: ExitStats::default(),
            clock,
            history: [None; HISTORY],
            next: 0,
            pio_size: 0,
        }
    }

    /// The most recent I/O exits (not console traffic), oldest first.
    pub fn history(&self) -> Vec<Access> {
        (0..HISTORY)
            .filter_map(|i| self.history[(self.next + i) % HISTORY])
            .collect()
    }

    fn remember(&mut self, kind: ExitKind, addr: u64, data: &[u8]) {
        if kind.is_pio() && CONSOLE_PORTS.contains(&addr) {
            return;
        }
        // Little-endian, byte by byte: a copy of a run-time length was a
        // memcpy call on every exit.
        let value = data[..data.len().min(8)]
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b));
        self.history[self.next] = Some(Access {
            kind,
            addr,
            value,
            len: data.len(),
        });
        self.next = (self.next + 1) % HISTORY;
    }

    /// Handles one exit whose port accesses are `pio_size` bytes each
    /// (from `kvm_run.io.size`).
    pub fn handle_io(&mut self, exit: VcpuExit<'_>, pio_size: usize) -> ExitAction {
        self.pio_size = pio_size;
        let action = self.handle(exit);
        self.pio_size = 0;
        action
    }

    /// Handles one exit, timing the handling.
    pub fn handle(&mut self, exit: VcpuExit<'_>) -> ExitAction {
        let start = self.clock.now();
        let (kind, target, action) = self.dispatch(exit);
        if self.stats.record(kind, target, self.clock.since(start)) {
            log::debug!(
                "first access to {target:?} ({}); no device owns it",
                kind.name()
            );
        }
        action
    }

    /// The bookkeeping of one PIO or MMIO access the bus has handled: its
    /// target for the stats (a device, or the address nobody owns) and its
    /// place in the crash-report history.
    fn access(
        &mut self,
        kind: ExitKind,
        addr: u64,
        owner: Option<DeviceIndex>,
        data: &[u8],
    ) -> (ExitKind, Option<Target>, ExitAction) {
        let target = match (owner, kind.is_pio()) {
            (Some(i), true) => Target::Pio(i),
            (Some(i), false) => Target::Mmio(i),
            (None, true) => Target::UnownedPio(addr),
            (None, false) => Target::UnownedMmio(addr),
        };
        self.remember(kind, addr, data);
        (kind, Some(target), ExitAction::Continue)
    }

    fn dispatch(&mut self, exit: VcpuExit<'_>) -> (ExitKind, Option<Target>, ExitAction) {
        use ExitAction::*;
        match exit {
            VcpuExit::IoIn(port, data) => {
                let port = u64::from(port);
                let mut owner = None;
                for one in data.chunks_mut(pio_chunk(self.pio_size, data.len())) {
                    owner = self.pio.read(port, one);
                }
                self.access(ExitKind::IoIn, port, owner, data)
            }
            VcpuExit::IoOut(port, data) => {
                let port = u64::from(port);
                let mut owner = None;
                for one in data.chunks(pio_chunk(self.pio_size, data.len())) {
                    owner = self.pio.write(port, one);
                }
                self.access(ExitKind::IoOut, port, owner, data)
            }
            VcpuExit::MmioRead(addr, data) => {
                let owner = self.mmio.read(addr, data);
                self.access(ExitKind::MmioRead, addr, owner, data)
            }
            VcpuExit::MmioWrite(addr, data) => {
                let owner = self.mmio.write(addr, data);
                self.access(ExitKind::MmioWrite, addr, owner, data)
            }
            // Only without an in-kernel irqchip does HLT reach us: the vCPU
            // loop then keeps the vCPU halted until an interrupt is pending.
            VcpuExit::Hlt => (ExitKind::Hlt, None, Halt),
            // The window the loop asked for: it injects before re-entering.
            VcpuExit::IrqWindowOpen => (ExitKind::IrqWindowOpen, None, Continue),
            VcpuExit::Intr => (ExitKind::Intr, None, Continue),
            VcpuExit::IoapicEoi(vector) => (ExitKind::IoapicEoi, None, IoapicEoi(vector)),
            VcpuExit::Shutdown => (ExitKind::Shutdown, None, Fatal(self::Fatal::Shutdown)),
            VcpuExit::InternalError => (
                ExitKind::InternalError,
                None,
                Fatal(self::Fatal::InternalError),
            ),
            VcpuExit::FailEntry(reason, cpu) => (
                ExitKind::FailEntry,
                None,
                Fatal(self::Fatal::FailEntry { reason, cpu }),
            ),
            VcpuExit::SystemEvent(kind, _) => {
                let action = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Stop(StopReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Stop(StopReason::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Fatal(self::Fatal::GuestPanic),
                    other => Fatal(self::Fatal::Unexpected(format!("system event {other}"))),
                };
                (ExitKind::SystemEvent, None, action)
            }
            VcpuExit::Debug(arch) => (ExitKind::Debug, None, Debug { pc: arch.pc }),
            VcpuExit::X86Wrmsr(exit) => {
                *exit.error = 0;
                (
                    ExitKind::Wrmsr,
                    None,
                    WriteMsr {
                        index: exit.index,
                        data: exit.data,
                    },
                )
            }
            other => (
                ExitKind::Other,
                None,
                Fatal(self::Fatal::Unexpected(format!("{other:?}"))),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;
    use std::sync::Mutex;

    /// Records writes; reads answer 0x5a.
    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(0x5a);
        }
        fn write(&mut self, o: u64, d: &[u8]) {
            self.0.push((o, d.to_vec()));
        }
    }

    fn handler() -> (ExitHandler, Arc<Mutex<Recorder>>, Arc<Mutex<Recorder>>) {
        let com = Arc::new(Mutex::new(Recorder::default()));
        let mmio_dev = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = Bus::new();
        pio.insert("com1", 0x3f8, 8, com.clone()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert("virtio0", 0xd000_0000, 0x1000, mmio_dev.clone())
            .unwrap();
        (
            ExitHandler::new(Arc::new(pio), Arc::new(mmio), ExitClock::Monotonic),
            com,
            mmio_dev,
        )
    }

    #[test]
    fn port_io_reaches_the_owning_device() {
        let (mut h, com, _) = handler();
        assert_eq!(h.handle(VcpuExit::IoOut(0x3f8, b"A")), ExitAction::Continue);
        assert_eq!(com.lock().unwrap().0, vec![(0, vec![b'A'])]);
        let mut data = [0u8; 1];
        assert_eq!(
            h.handle(VcpuExit::IoIn(0x3fd, &mut data)),
            ExitAction::Continue
        );
        assert_eq!(data, [0x5a]);
        assert_eq!(h.stats.count(ExitKind::IoOut), 1);
        assert_eq!(h.stats.count(ExitKind::IoIn), 1);
        assert_eq!(h.stats.target(Target::Pio(0)).count, 2);
    }

    #[test]
    fn string_pio_is_one_access_per_element() {
        let (mut h, com, _) = handler();
        h.handle_io(VcpuExit::IoOut(0x3f8, b"abc"), 1);
        let writes: Vec<_> = com.lock().unwrap().0.drain(..).collect();
        assert_eq!(
            writes,
            vec![(0, b"a".to_vec()), (0, b"b".to_vec()), (0, b"c".to_vec())]
        );
        h.handle_io(VcpuExit::IoOut(0x3f8, &[1, 2, 3, 4]), 2);
        assert_eq!(
            com.lock().unwrap().0,
            vec![(0, vec![1, 2]), (0, vec![3, 4])]
        );
        // A size that does not divide the data is taken as one access.
        com.lock().unwrap().0.clear();
        h.handle_io(VcpuExit::IoOut(0x3f8, &[1, 2, 3]), 2);
        assert_eq!(com.lock().unwrap().0, vec![(0, vec![1, 2, 3])]);
        assert_eq!(h.stats.count(ExitKind::IoOut), 3, "one exit each");
        let mut data = [0u8; 4];
        h.handle_io(VcpuExit::IoIn(0x3f8, &mut data), 1);
        assert_eq!(data, [0x5a; 4]);
    }

    #[test]
    fn mmio_reaches_the_owning_device_at_its_offset() {
        let (mut h, _, dev) = handler();
        h.handle(VcpuExit::MmioWrite(0xd000_0070, &[1, 0, 0, 0]));
        assert_eq!(dev.lock().unwrap().0, vec![(0x70, vec![1, 0, 0, 0])]);
        let mut data = [0u8; 4];
        h.handle(VcpuExit::MmioRead(0xd000_0000, &mut data));
        assert_eq!(data, [0x5a; 4]);
    }

    #[test]
    fn unowned_accesses_read_all_ones_and_are_counted() {
        let (mut h, _, _) = handler();
        let mut data = [0u8; 4];
        assert_eq!(
            h.handle(VcpuExit::MmioRead(0xc000_0000, &mut data)),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
        let mut b = [0u8; 1];
        assert_eq!(h.handle(VcpuExit::IoIn(0x70, &mut b)), ExitAction::Continue);
        assert_eq!(b, [0xff]);
        assert_eq!(h.handle(VcpuExit::IoOut(0x71, &[0])), ExitAction::Continue);
        assert_eq!(h.stats.target(Target::UnownedMmio(0xc000_0000)).count, 1);
        assert_eq!(h.stats.target(Target::UnownedPio(0x70)).count, 1);
        assert_eq!(h.stats.target(Target::UnownedPio(0x71)).count, 1);
    }

    #[test]
    fn deaths_are_fatal_and_system_events_stop() {
        let (mut h, _, _) = handler();
        assert_eq!(
            h.handle(VcpuExit::Shutdown),
            ExitAction::Fatal(Fatal::Shutdown)
        );
        assert_eq!(
            h.handle(VcpuExit::InternalError),
            ExitAction::Fatal(Fatal::InternalError)
        );
        assert_eq!(
            h.handle(VcpuExit::FailEntry(0x21, 3)),
            ExitAction::Fatal(Fatal::FailEntry {
                reason: 0x21,
                cpu: 3
            })
        );
        assert_eq!(
            h.handle(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            ExitAction::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            h.handle(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            ExitAction::Stop(StopReason::Reset)
        );
        assert_eq!(
            h.handle(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])),
            ExitAction::Fatal(Fatal::GuestPanic)
        );
        assert!(matches!(
            h.handle(VcpuExit::SystemEvent(99, &[])),
            ExitAction::Fatal(Fatal::Unexpected(_))
        ));
        assert!(matches!(
            h.handle(VcpuExit::Unknown),
            ExitAction::Fatal(Fatal::Unexpected(_))
        ));
    }

    #[test]
    fn history_keeps_recent_io_but_not_console_traffic() {
        let (mut h, _, _) = handler();
        h.handle(VcpuExit::IoOut(0x3f8, b"x"));
        h.handle(VcpuExit::IoOut(0x64, &[0xfe]));
        let mut b = [0u8; 4];
        h.handle(VcpuExit::MmioRead(0xd000_0000, &mut b));
        let hist = h.history();
        assert_eq!(hist.len(), 2);
        assert_eq!(
            (hist[0].kind, hist[0].addr, hist[0].value),
            (ExitKind::IoOut, 0x64, 0xfe)
        );
        assert_eq!(
            (hist[1].kind, hist[1].value, hist[1].len),
            (ExitKind::MmioRead, 0x5a5a_5a5a, 4)
        );
        for i in 0..100 {
            h.handle(VcpuExit::IoOut(0x80, &[i]));
        }
        let hist = h.history();
        assert_eq!(hist.len(), HISTORY);
        assert_eq!(hist.last().unwrap().value, 99);
        // Values are little-endian, whatever the width.
        h.handle(VcpuExit::MmioWrite(0xd000_0000, &[1, 2, 3, 4, 5, 6, 7, 8]));
        h.handle(VcpuExit::MmioWrite(0xd000_0000, &[0xaa, 0xbb]));
        let hist = h.history();
        let last: Vec<(u64, usize)> = hist[HISTORY - 2..]
            .iter()
            .map(|a| (a.value, a.len))
            .collect();
        assert_eq!(last, [(0x0807_0605_0403_0201, 8), (0xbbaa, 2)]);
    }

    #[test]
    fn benign_exits_continue() {
        let (mut h, _, _) = handler();
        for exit in [VcpuExit::IrqWindowOpen, VcpuExit::Intr] {
            assert_eq!(h.handle(exit), ExitAction::Continue);
        }
        assert_eq!(h.handle(VcpuExit::Hlt), ExitAction::Halt);
        assert_eq!(h.stats.total_exits(), 3);
        assert_eq!(h.stats.count(ExitKind::Hlt), 1);
    }
}
