//! Step 3 of a VM's life, for one vCPU: the seed's `kvm_main_loop_cpu`.
//! While the vCPU is not stopped, run KVM_RUN and dispatch the exit; while
//! it is stopped (paused), wait for the next request.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuFd;

use super::clock::ExitClock;
use super::emulation::{syscall, EmulationRepairs};
use super::exit::{ExitAction, ExitHandler, Fatal};
use super::handle;
use super::handle::{RequestReceiver, Wakeup};
use super::state::{VcpuRequest, VcpuResponse, VcpuState};
use super::stats::ExitKind;
use super::{report, MachineReady, VcpuOutcome};
use crate::irqchip::inject::{BeforeRun, Injector};
use crate::lifecycle::StopReason;
use crate::persist;
use crate::vm::GuestMemory;

pub struct Vcpu {
    id: u8,
    /// Declared before `fd`: kicks stop writing to the kvm_run page before
    /// it is unmapped, also when the thread unwinds from a panic.
    _kicks: handle::KickRegistration,
    fd: VcpuFd,
    ready: Arc<MachineReady>,
    handler: ExitHandler,
    /// Present only on emulation-only hosts that complete emulator gaps.
    repairs: Option<EmulationRepairs>,
    /// vCPU 0 with Tsubame's PIC: injection and the halted state.
    injector: Option<Injector>,
    requests: RequestReceiver,
    responses: Sender<(u8, VcpuResponse)>,
    state: VcpuState,
    samples: BTreeMap<(u64, u8, u64), u64>,
}

impl Vcpu {
    pub fn new(
        id: u8,
        mut fd: VcpuFd,
        clock: ExitClock,
        ready: Arc<MachineReady>,
        wakeup: Arc<Wakeup>,
        requests: RequestReceiver,
        responses: Sender<(u8, VcpuResponse)>,
    ) -> Vcpu {
        let injector = match (&ready.irqchip, id) {
            (Some(chip), 0) => Some(Injector::new(chip.clone(), wakeup)),
            _ => None,
        };
        Vcpu {
            injector,
            id,
            _kicks: handle::KickRegistration::new(fd.get_kvm_run()),
            handler: ExitHandler::new(ready.pio.clone(), ready.mmio.clone(), clock),
            repairs: ready
                .complete_gaps
                .then(|| EmulationRepairs::new(ready.sync_regs)),
            fd,
            ready,
            requests,
            responses,
            state: VcpuState::Running,
            samples: BTreeMap::new(),
        }
    }

    /// Runs until the vCPU is asked to exit or the machine stops.
    /// A function of its own in every build (called once per thread):
    /// profiles and tests/startup_layout.rs find it by name.
    #[inline(never)]
    pub fn run_loop(mut self) -> VcpuOutcome {
        if self.id == 0 {
            self.ready.lifecycle.mark_first_run();
        }
        loop {
            match self.state {
                VcpuState::Running => {
                    while let Some(request) = self.requests.try_recv() {
                        self.apply(request);
                    }
                    if self.ready.lifecycle.is_stopping() {
                        self.state = VcpuState::Exiting;
                    }
                    // The seed's loop: without an in-kernel irqchip, process
                    // its events first and stay halted while halted.
                    if self.state == VcpuState::Running && self.interrupts() {
                        self.run_once();
                    }
                }
                VcpuState::Paused => match self.requests.recv() {
                    Ok(request) => self.apply(request),
                    // The controller is gone: nobody can resume us.
                    Err(_) => self.state = VcpuState::Exiting,
                },
                VcpuState::Exiting => break,
            }
        }
        VcpuOutcome {
            stats: self.handler.stats,
            samples: self.samples,
        }
    }

    fn apply(&mut self, request: VcpuRequest) {
        let next = self.state.next(request);
        if self.state == VcpuState::Running && next == VcpuState::Paused {
            self.park();
        }
        self.state = next;
        if request == VcpuRequest::ReportStats {
            let stats = Box::new(self.handler.stats.clone());
            let _ = self.responses.send((self.id, VcpuResponse::Stats(stats)));
        } else if request == VcpuRequest::Save {
            let saved = Box::new(self.save());
            let _ = self.responses.send((self.id, VcpuResponse::Saved(saved)));
        } else if let Some(response) = VcpuState::response(request) {
            let _ = self.responses.send((self.id, response));
        }
    }

    /// The vCPU's state for a snapshot; only a parked vCPU has one that
    /// holds still.
    fn save(&mut self) -> Result<persist::vcpu::VcpuState, String> {
        if self.state != VcpuState::Paused {
            return Err(format!("vCPU {} is not paused", self.id));
        }
        let mut s = persist::vcpu::save(
            &self.fd,
            self.id,
            &self.ready.state_msrs,
            self.ready.xsave_bytes,
        )
        .map_err(|e| format!("vCPU {}: {e}", self.id))?;
        s.repairs = self.repairs.as_ref().map(EmulationRepairs::state);
        Ok(s)
    }

    /// Takes a snapshot's state (before the first KVM_RUN) and parks;
    /// answers on the response channel. False when it could not.
    pub fn restore(&mut self, state: Option<&persist::vcpu::VcpuState>) -> bool {
        let id = self.id;
        let result = match state {
            None => Err(format!("vCPU {id}: not in the snapshot")),
            Some(s) => persist::vcpu::restore(&self.fd, s, self.ready.xsave_bytes)
                .map_err(|e| format!("vCPU {id}: {e}"))
                .and_then(|()| match (&mut self.repairs, s.repairs) {
                    (Some(r), Some(saved)) => r
                        .restore(&mut self.fd, &self.ready.memory, saved)
                        .map_err(|e| format!("vCPU {id}: syscall repair: {e}")),
                    _ => Ok(()),
                }),
        };
        let ok = result.is_ok();
        self.state = VcpuState::Paused;
        let _ = self.responses.send((id, VcpuResponse::Restored(result)));
        ok
    }

    /// Leaves the guest in a state that can be paused: a PIO/MMIO exit we
    /// already answered is completed by one KVM_RUN with immediate_exit
    /// set (KVM's API documentation asks for this), and the guest's
    /// kvmclock is told it was stopped, so a long pause is not taken for
    /// a soft lockup.
    fn park(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => log::warn!("vCPU {}: completing I/O before pause: {e}", self.id),
            Ok(exit) => log::warn!(
                "vCPU {}: KVM_RUN with immediate_exit returned {exit:?}",
                self.id
            ),
        }
        self.fd.set_kvm_immediate_exit(0);
        match self.fd.kvmclock_ctrl() {
            Ok(()) => {}
            // The guest has not set up kvmclock: nothing to tell it.
            Err(e) if e.errno() == libc::EINVAL => {}
            Err(e) => log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.id),
        }
    }

    /// Before KVM_RUN, with Tsubame's PIC: inject what is pending if the
    /// guest can take it, else ask for the interrupt window; while halted,
    /// wait for an interrupt or a request. False: do not run now.
    fn interrupts(&mut self) -> bool {
        let Some(injector) = &mut self.injector else {
            return true;
        };
        let run = self.fd.get_kvm_run();
        // `if_flag` is valid only without an in-kernel LAPIC; with one,
        // `ready_for_interrupt_injection` already accounts for IF.
        let if_flag = run.if_flag != 0 || self.ready.cpu_profile.apic;
        let ready = run.ready_for_interrupt_injection != 0;
        let BeforeRun::Run { vector, window } = injector.before_run(ready, if_flag) else {
            return false;
        };
        self.fd.get_kvm_run().request_interrupt_window = u8::from(window);
        if let Some(vector) = vector {
            if let Err(e) = crate::kvm::inject_interrupt(&self.fd, vector) {
                self.crash(Fatal::Unexpected(format!(
                    "KVM_INTERRUPT of vector {vector:#x} failed: {e}"
                )));
                return false;
            }
            self.handler.stats.injections += 1;
        }
        true
    }

    /// One KVM_RUN and the handling of its exit.
    fn run_once(&mut self) {
        let kvm_run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let action = match self.fd.run() {
            Ok(exit) => {
                crate::faults::forbidden_call("vcpu");
                if crate::faults::armed(crate::faults::VCPU_PANIC) {
                    panic!("injected fault {}", crate::faults::VCPU_PANIC);
                }
                // SAFETY: `kvm_run` is this vCPU's kvm_run mapping, alive as
                // long as `self.fd`; KVM filled `io` before KVM_RUN returned
                // a PIO exit, and `exit` borrows only the data area past it.
                let size = match &exit {
                    kvm_ioctls::VcpuExit::IoIn(..) | kvm_ioctls::VcpuExit::IoOut(..) => unsafe {
                        usize::from((*kvm_run).__bindgen_anon_1.io.size)
                    },
                    _ => 0,
                };
                self.handler.handle_io(exit, size)
            }
            Err(e) if e.errno() == libc::EINTR => {
                self.fd.set_kvm_immediate_exit(0);
                self.handler
                    .stats
                    .record(ExitKind::Kick, None, Duration::ZERO);
                if self.ready.sample_rip {
                    self.sample();
                }
                ExitAction::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::Fatal(Fatal::Unexpected(format!("KVM_RUN failed: {e}"))),
        };
        let action = match &mut self.repairs {
            Some(r) => r.resolve(
                &mut self.fd,
                &self.ready.memory,
                action,
                &mut self.handler.stats,
            ),
            None => action,
        };
        match action {
            ExitAction::Continue => {}
            // With an in-kernel irqchip HLT waits in KVM, and this exit is
            // a spurious wake-up: re-entering is legal.
            ExitAction::Halt => {
                if let Some(injector) = &mut self.injector {
                    injector.halted = true;
                }
            }
            ExitAction::IoapicEoi(vector) => {
                if let Some(io) = &self.ready.ioapic {
                    io.eoi(vector);
                }
            }
            ExitAction::Stop(reason) => {
                self.ready.lifecycle.request_stop(reason);
                self.state = VcpuState::Exiting;
            }
            ExitAction::Fatal(why) => self.crash(why),
            // Without the repairs nobody armed a breakpoint or a filter.
            ExitAction::Debug { pc } => {
                self.crash(Fatal::Unexpected(format!("KVM_EXIT_DEBUG at {pc:#x}")))
            }
            ExitAction::WriteMsr { index, .. } => {
                self.crash(Fatal::Unexpected(format!("filtered WRMSR {index:#x}")))
            }
        }
    }

    /// The guest died: report it and stop the machine.
    fn crash(&mut self, why: Fatal) {
        let mut cpu = report::snapshot(&mut self.fd, &why, &self.ready.memory);
        cpu.note = self.repairs.as_mut().and_then(EmulationRepairs::take_note);
        cpu.history = self.handler.history();
        let id = usize::from(self.id);
        let report = report::render(id, &why, &cpu);
        self.ready
            .lifecycle
            .request_stop(StopReason::GuestCrash { vcpu: id, report });
        self.state = VcpuState::Exiting;
    }

    /// Records where the guest was when the sampling kick arrived.
    fn sample(&mut self) {
        if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            let cpl = report::cpl(&s);
            let caller = if cpl == 0 {
                stack_caller(&self.fd, &self.ready.memory, r.rsp)
            } else {
                0
            };
            *self.samples.entry((r.rip, cpl, caller)).or_insert(0) += 1;
        }
    }
}

/// The first word on the guest stack that looks like a kernel text
/// address: a cheap guess at the sampled function's caller.
fn stack_caller(fd: &VcpuFd, mem: &GuestMemory, rsp: u64) -> u64 {
    let Some(words) = syscall::read_virt::<128>(fd, mem, rsp) else {
        return 0;
    };
    words
        .chunks(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        .find(|&w| (0xffff_ffff_8000_0000..0xffff_ffff_c000_0000).contains(&w))
        .unwrap_or(0)
}
