//! A running machine: the main thread's loop (console input, host signals,
//! the stop event, the controller's requests) while the vCPU threads run;
//! pause and resume; then the machine's death: every vCPU asked to exit
//! and joined, the terminal restored, the reason and the statistics
//! handed back.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::console::{EscapeFilter, RawMode};
use crate::devices::bus;
use crate::devices::manager::DeviceCounters;
use crate::devices::DeviceManager;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::signals;
use crate::vcpu::stats::ExitStats;
use crate::vcpu::{VcpuHandle, VcpuRequest, VcpuResponse};
use crate::vm::builder::BuildSummary;
use crate::vm::{GuestMemory, Vm};

/// What a watched fd is (its event data).
const STOP: u32 = 0;
const SIGNAL: u32 = 1;
const STDIN: u32 = 2;
const DRAINED: u32 = 3;
/// The user-space PIT's timer (`split`, `userspace`).
const PIT_TIMER: u32 = 4;
/// Data from here up are the controller's fds, in [`Control::fds`] order.
const CONTROL: u32 = 16;
/// How long pause and resume wait for each vCPU and the device thread.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Input held back while the guest's FIFO is full, at most.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Memory use of the VMM process and of the guest.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryFigures {
    /// VmHWM: the process's peak resident set.
    pub peak_rss_kib: u64,
    /// VmRSS now.
    pub rss_kib: u64,
    /// RssAnon now: private memory, guest RAM included.
    pub anon_kib: u64,
    /// RssFile now: the binary's and libraries' pages, which every process
    /// that maps them shares.
    pub file_kib: u64,
    /// Guest RAM pages resident (touched) in the host.
    pub guest_resident_kib: u64,
}

impl MemoryFigures {
    pub fn overhead_kib(&self) -> u64 {
        self.peak_rss_kib.saturating_sub(self.guest_resident_kib)
    }

    /// What this VMM alone costs the host: private memory beyond guest RAM.
    pub fn private_overhead_kib(&self) -> u64 {
        self.anon_kib.saturating_sub(self.guest_resident_kib)
    }
}

/// How a machine ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub reason: StopReason,
    pub per_vcpu: Vec<ExitStats>,
    pub total: ExitStats,
    /// With `--stats` only: mincore over all guest RAM costs milliseconds
    /// in a large guest, and every stop would pay it.
    pub memory: Option<MemoryFigures>,
    /// The `--stats` text: exits by reason and device, per vCPU and total
    /// (empty without `--stats`).
    pub stats_text: String,
    /// Guest RIP samples, all vCPUs: ((RIP, CPL, caller), count), most
    /// frequent first.
    pub samples: Vec<((u64, u8, u64), u64)>,
    /// From vCPU 0's first KVM_RUN to the stop request (benchmarks).
    pub guest_time: Option<std::time::Duration>,
}

/// Whoever drives the running machine from outside (the API): the loop
/// watches its fds and calls it when one is readable, on the main thread,
/// between the machine's own events.
pub trait Control {
    fn fds(&self) -> Vec<RawFd>;
    fn on_ready(&mut self, fd: RawFd, machine: &Machine);
}

pub struct Machine {
    pub(crate) vm: Vm,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) vcpus: Vec<VcpuHandle>,
    /// Where vCPUs answer pause and resume requests.
    pub(crate) vcpu_responses: std::sync::mpsc::Receiver<(u8, VcpuResponse)>,
    pub(crate) devices: DeviceManager,
    pub(crate) paused: Cell<bool>,
    /// The PIT as it was when the machine paused: put back on resume, so
    /// the time paused is not delivered as a burst of missed ticks (KVM's
    /// PIT reinjects them), as QEMU does.
    pub(crate) paused_pit: Cell<Option<kvm_bindings::kvm_pit_state2>>,
    /// A snapshot failed after taking the dirty logs: a Diff now would
    /// miss pages, so only a Full may come next.
    pub(crate) diff_base_lost: Cell<bool>,
    /// -1, or how often (ms) to sample guest RIPs.
    pub(crate) sample_period_ms: i32,
    /// What a snapshot records to build this machine again.
    pub(crate) shape: crate::persist::MachineShape,
    /// `--stats`: the outcome carries the stats text and memory figures.
    pub(crate) report_stats: bool,
    pub summary: BuildSummary,
}

impl Machine {
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.vm.memory
    }

    /// Runs until the machine stops, then tears it down.
    pub fn run(self, control: Option<&mut dyn Control>) -> RunOutcome {
        if let Err(e) = self.event_loop(control) {
            self.lifecycle
                .request_stop(StopReason::VmmError(format!("main loop: {e}")));
        }
        self.shut_down()
    }

    /// What a snapshot records to build this machine again.
    pub fn shape(&self) -> &crate::persist::MachineShape {
        &self.shape
    }

    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Every vCPU leaves KVM_RUN and parks, then the device thread stops
    /// taking requests. Pausing a paused machine changes nothing.
    pub fn pause(&self) -> Result<(), String> {
        if self.paused.get() {
            return Ok(());
        }
        let start = Instant::now();
        self.ask_vcpus(VcpuRequest::Pause)?;
        self.devices.pause(ACK_TIMEOUT)?;
        // Tsubame's own PIT counts host time (a paused guest then sees
        // one coalesced tick); KVM's is frozen.
        if self.vm.irqchip.in_kernel() {
            match self.vm.fd.get_pit2() {
                Ok(pit) => self.paused_pit.set(Some(pit)),
                Err(e) => log::warn!("KVM_GET_PIT2 at pause: {e}"),
            }
        }
        self.paused.set(true);
        log::info!("paused in {:.3} ms", start.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// The device thread first (it runs every queue once), then the vCPUs.
    pub fn resume(&self) -> Result<(), String> {
        if !self.paused.get() {
            return Ok(());
        }
        let start = Instant::now();
        if let Some(pit) = self.paused_pit.take() {
            // Reloads each counter from now: no backlog from the pause.
            if let Err(e) = self.vm.fd.set_pit2(&pit) {
                log::warn!("KVM_SET_PIT2 at resume: {e}");
            }
        }
        self.devices.resume(ACK_TIMEOUT)?;
        self.ask_vcpus(VcpuRequest::Resume)?;
        self.paused.set(false);
        log::info!("resumed in {:.3} ms", start.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) {
        self.devices.send_ctrl_alt_del();
    }

    /// Each vCPU's exit statistics so far (asked of the vCPU threads, which
    /// own them: nothing is shared on the exit path).
    pub fn exit_stats(&self) -> Result<Vec<ExitStats>, String> {
        let mut out = vec![ExitStats::default(); self.vcpus.len()];
        for (id, r) in self.ask_vcpus(VcpuRequest::ReportStats)? {
            if let (VcpuResponse::Stats(s), Some(slot)) = (r, out.get_mut(usize::from(id))) {
                *slot = *s;
            }
        }
        Ok(out)
    }

    pub fn device_counters(&self) -> Vec<DeviceCounters> {
        self.devices.counters()
    }

    /// Sends `request` to every vCPU and collects one answer from each.
    pub(crate) fn ask_vcpus(
        &self,
        request: VcpuRequest,
    ) -> Result<Vec<(u8, VcpuResponse)>, String> {
        // Answers left over from an earlier request that timed out.
        while self.vcpu_responses.try_recv().is_ok() {}
        for v in &self.vcpus {
            v.send(request);
        }
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut answers = Vec::with_capacity(self.vcpus.len());
        while answers.len() < self.vcpus.len() {
            if self.lifecycle.is_stopping() {
                return Err("the machine is stopping".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Short waits, so a machine that stops meanwhile is noticed.
            match self
                .vcpu_responses
                .recv_timeout(left.min(Duration::from_millis(50)))
            {
                Ok(answer) => answers.push(answer),
                Err(_) if left.is_zero() => {
                    return Err(format!(
                        "{} of {} vCPUs did not answer {request:?} within {ACK_TIMEOUT:?}",
                        self.vcpus.len() - answers.len(),
                        self.vcpus.len()
                    ))
                }
                Err(_) => {}
            }
        }
        Ok(answers)
    }

    fn event_loop(&self, control: Option<&mut dyn Control>) -> std::io::Result<()> {
        let signal_event = signals::install()?;
        // Every thread of the machine exists now; the main thread is
        // filtered before it handles anything the guest sends.
        crate::confine::install(crate::confine::ThreadKind::Vmm).map_err(std::io::Error::other)?;
        crate::faults::try_open();
        // The guest owns the terminal only when its console is on stdio.
        let _raw = match &self.devices.serial {
            Some(_) => RawMode::enable(libc::STDIN_FILENO)?,
            None => None,
        };
        let control_fds = control.as_ref().map(|c| c.fds()).unwrap_or_default();
        let mut manager = EventManager::new().map_err(em_error)?;
        let id = manager.add_subscriber(MainLoop {
            machine: self,
            control,
            control_fds,
            signal_event,
            console: self
                .devices
                .serial
                .as_ref()
                .map(|_| ConsoleInput::default()),
            error: None,
        });
        crate::trace::mark("main loop started");
        // A signal that arrived before the loop started still counts.
        if let Some(sig) = signals::take() {
            self.lifecycle.request_stop(StopReason::Signal(sig));
        }
        while !self.lifecycle.is_stopping() {
            crate::faults::forbidden_call("vmm");
            let n = manager
                .run_with_timeout(self.sample_period_ms)
                .map_err(em_error)?;
            if n == 0 && self.sample_period_ms >= 0 {
                // The sampling timer: kick every vCPU so it records its RIP.
                for v in &self.vcpus {
                    v.kick();
                }
            }
            if let Some(e) = manager.subscriber_mut(id).map_err(em_error)?.error.take() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Tears down a machine that never ran (a restore that failed).
    pub fn discard(self) {
        let _ = self.shut_down();
    }

    fn shut_down(self) -> RunOutcome {
        crate::trace::mark("main loop ended");
        let mut per_vcpu = Vec::new();
        let mut samples = std::collections::BTreeMap::new();
        for v in &self.vcpus {
            v.send(VcpuRequest::Exit);
        }
        for t in self.vcpus {
            let id = t.id;
            match t.join() {
                Ok(outcome) => {
                    per_vcpu.push(outcome.stats);
                    for (k, n) in outcome.samples {
                        *samples.entry(k).or_insert(0u64) += n;
                    }
                }
                Err(_) => {
                    self.lifecycle
                        .request_stop(StopReason::VmmError(format!("vCPU {id} thread panicked")));
                    per_vcpu.push(ExitStats::default());
                }
            }
        }
        crate::trace::mark("vcpus joined");
        // No vCPU can notify any more; let the device thread finish.
        let mut devices = self.devices;
        devices.stop();
        crate::trace::mark("devices stopped");
        let dropped = bus::lock(&devices.com1).drain_output();
        if dropped > 0 {
            log::warn!("console: {dropped} output bytes dropped (stdout did not keep up)");
        }
        let reason = self
            .lifecycle
            .reason()
            .unwrap_or_else(|| StopReason::VmmError("stopped without a reason".into()));
        let mut total = ExitStats::default();
        for s in &per_vcpu {
            total.merge(s);
        }
        let mut stats_text = String::new();
        if self.report_stats {
            for (id, s) in per_vcpu.iter().enumerate() {
                stats_text += &s.render(&format!("vCPU {id}"), &devices.pio, &devices.mmio);
            }
            if per_vcpu.len() > 1 {
                stats_text += &total.render("all vCPUs", &devices.pio, &devices.mmio);
            }
        }
        let memory = self.report_stats.then(|| memory_figures(&self.vm.memory));
        // Threads first (console, virtio), then the VM, each marked.
        drop(devices);
        crate::trace::mark("device threads joined");
        drop(self.vm);
        crate::trace::mark("vm closed");
        let mut samples: Vec<_> = samples.into_iter().collect();
        samples.sort_by_key(|s| std::cmp::Reverse(s.1));
        RunOutcome {
            reason,
            per_vcpu,
            total,
            memory,
            stats_text,
            samples,
            guest_time: self.lifecycle.guest_time(),
        }
    }
}

fn em_error(e: event_manager::Error) -> std::io::Error {
    std::io::Error::other(format!("event manager: {e}"))
}

/// Console input on its way from stdin to the guest's UART: Ctrl-A
/// filtered out, held while the guest's FIFO is full or the machine is
/// paused, and stdin left unread while too much is held.
#[derive(Default)]
struct ConsoleInput {
    filter: EscapeFilter,
    pending: Vec<u8>,
    watched: bool,
    eof: bool,
}

/// The main thread's one subscriber: the stop event, host signals, the
/// console, the user-space PIT's timer, and the controller's fds.
struct MainLoop<'m, 'c> {
    machine: &'m Machine,
    control: Option<&'c mut dyn Control>,
    control_fds: Vec<RawFd>,
    signal_event: &'static vmm_sys_util::eventfd::EventFd,
    console: Option<ConsoleInput>,
    /// A failure the loop must end on.
    error: Option<std::io::Error>,
}

/// Watches stdin; false when epoll cannot (a regular file, /dev/null).
fn watch_stdin(ops: &mut EventOps) -> bool {
    ops.add(Events::with_data_raw(
        libc::STDIN_FILENO,
        STDIN,
        EventSet::IN,
    ))
    .is_ok()
}

impl MainLoop<'_, '_> {
    fn read_stdin(&mut self, ops: &mut EventOps) {
        let Some(c) = self.console.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a stack buffer of the given length.
        let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            // EOF or error: the guest gets no more input.
            let _ = ops.remove(Events::empty_raw(libc::STDIN_FILENO));
            c.watched = false;
            c.eof = true;
            return;
        }
        let f = c.filter.feed(&buf[..got as usize]);
        if f.quit {
            self.machine.lifecycle.request_stop(StopReason::ConsoleQuit);
        }
        c.pending.extend(f.to_guest);
    }

    /// Hands held input to the UART and applies back-pressure to stdin.
    fn feed_console(&mut self, ops: &mut EventOps) {
        let (Some(c), Some(serial)) = (self.console.as_mut(), &self.machine.devices.serial) else {
            return;
        };
        // While paused, console input waits here (bounded below).
        if !c.pending.is_empty() && !self.machine.paused.get() {
            let n = bus::lock(serial).enqueue_input(&c.pending);
            c.pending.drain(..n);
        }
        if c.watched && c.pending.len() >= MAX_PENDING_INPUT {
            let _ = ops.remove(Events::empty_raw(libc::STDIN_FILENO));
            c.watched = false;
        } else if !c.watched && !c.eof && c.pending.is_empty() {
            c.watched = watch_stdin(ops);
        }
    }
}

impl MutEventSubscriber for MainLoop<'_, '_> {
    fn init(&mut self, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        let mut fds = vec![
            (self.machine.lifecycle.stop_event.as_raw_fd(), STOP),
            (self.signal_event.as_raw_fd(), SIGNAL),
        ];
        for (i, fd) in self.control_fds.iter().enumerate() {
            fds.push((*fd, CONTROL + i as u32));
        }
        if let Some(serial) = &self.machine.devices.serial {
            fds.push((bus::lock(serial).drained_event().as_raw_fd(), DRAINED));
        }
        if let Some(fd) = self
            .machine
            .devices
            .chips
            .chip
            .as_ref()
            .and_then(|c| c.timer_fd())
        {
            fds.push((fd, PIT_TIMER));
        }
        for (fd, data) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                self.error = Some(std::io::Error::other(format!("cannot watch fd {fd}: {e}")));
            }
        }
        if let Some(c) = self.console.as_mut() {
            // stdin may be something epoll cannot watch (a file): no input.
            c.watched = watch_stdin(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            SIGNAL => {
                let _ = self.signal_event.read();
                if let Some(sig) = signals::take() {
                    self.machine.lifecycle.request_stop(StopReason::Signal(sig));
                }
            }
            STDIN => self.read_stdin(ops),
            PIT_TIMER => {
                if let Some(chip) = &self.machine.devices.chips.chip {
                    chip.tick();
                }
            }
            DRAINED => {
                if let Some(serial) = &self.machine.devices.serial {
                    let _ = bus::lock(serial).drained_event().read();
                }
            }
            t if t >= CONTROL => {
                let fd = self.control_fds.get((t - CONTROL) as usize).copied();
                if let (Some(c), Some(fd)) = (self.control.as_deref_mut(), fd) {
                    c.on_ready(fd, self.machine);
                }
            }
            // STOP: the loop checks the lifecycle after each turn.
            _ => {}
        }
        self.feed_console(ops);
    }
}

/// A `/proc/self/status` field in KiB (0 when missing).
fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Counts guest RAM pages resident in the host (mincore).
fn guest_resident_kib(mem: &GuestMemory) -> u64 {
    let page = 4096usize;
    let mut pages = 0u64;
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: [host, host+len) is one mapping owned by `mem`; mincore
        // writes one byte per page into `vec`, which has exactly that many.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            pages += vec.iter().filter(|b| **b & 1 == 1).count() as u64;
        }
    }
    pages * page as u64 / 1024
}

pub fn memory_figures(mem: &GuestMemory) -> MemoryFigures {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    MemoryFigures {
        peak_rss_kib: status_kib(&status, "VmHWM:"),
        rss_kib: status_kib(&status, "VmRSS:"),
        anon_kib: status_kib(&status, "RssAnon:"),
        file_kib: status_kib(&status, "RssFile:"),
        guest_resident_kib: guest_resident_kib(mem),
    }
}
