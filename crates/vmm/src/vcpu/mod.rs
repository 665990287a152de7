//! Steps 2 and 3 of a VM's life, for each vCPU: a host thread creates its
//! vCPU, waits at the [`StartGate`] until the whole machine is initialised
//! (qemu-kvm's `ap_main_loop` waiting for `qemu_system_ready`), configures
//! itself ([`setup`]), and runs the loop in [`run`] until asked to exit.
//!
//! - [`handle`]: the controller's [`VcpuHandle`] (request channel, kick).
//! - [`state`]: the per-vCPU state machine the requests drive.
//! - [`exit`]: what to do with each exit (new exit reasons go there).
//! - [`emulation`]: emulation-only-host repairs, behind one hook.

pub mod emulation;
pub mod exit;
pub mod handle;
pub mod report;
pub mod run;
pub mod setup;
pub mod state;
pub mod stats;

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::VmFd;

use crate::boot::cpuid::CpuProfile;
use crate::boot::Entry;
use crate::devices::Bus;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::vm::GuestMemory;
pub use handle::{install_kick_handler, kick_signal, VcpuHandle};
pub use state::{VcpuRequest, VcpuResponse, VcpuState};
use stats::ExitStats;

/// What every vCPU thread receives once the machine is ready to run.
pub struct MachineReady {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub lifecycle: Arc<Lifecycle>,
    pub memory: GuestMemory,
    pub start: Start,
    pub supported_cpuid: CpuId,
    pub cpu_profile: CpuProfile,
    pub vcpu_count: u8,
    /// Complete instructions KVM's emulator rejects (emulation-only hosts).
    pub complete_gaps: bool,
    /// Record the guest RIP at every kick (the main loop kicks on a timer).
    pub sample_rip: bool,
    /// The MSRs a snapshot saves, and the size of the XSAVE area.
    pub state_msrs: Vec<u32>,
    pub xsave_bytes: usize,
    /// Tsubame's PIC and PIT, when KVM has no irqchip (vCPU 0 injects).
    pub irqchip: Option<Arc<crate::irqchip::UserChip>>,
    /// `split`: Tsubame's IOAPIC (the loop hands it the LAPICs' EOIs).
    pub ioapic: Option<Arc<crate::irqchip::ioapic::IoApic>>,
}

/// How a vCPU begins: at the kernel's entry, or where a snapshot left it.
pub enum Start {
    Boot(Entry),
    /// One state per vCPU, by id; restored vCPUs park until resumed.
    Restore(Vec<crate::persist::vcpu::VcpuState>),
}

enum GateState {
    Closed,
    Open(Arc<MachineReady>),
    Aborted,
}

/// The barrier between "vCPU created" and "first KVM_RUN".
pub struct StartGate {
    state: Mutex<GateState>,
    opened: Condvar,
}

impl Default for StartGate {
    fn default() -> Self {
        StartGate {
            state: Mutex::new(GateState::Closed),
            opened: Condvar::new(),
        }
    }
}

impl StartGate {
    /// Lets every waiting vCPU run.
    pub fn open(&self, ready: Arc<MachineReady>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = GateState::Open(ready);
        self.opened.notify_all();
    }

    /// Machine init failed: waiting vCPUs exit without running.
    pub fn abort(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, GateState::Closed) {
            *s = GateState::Aborted;
        }
        self.opened.notify_all();
    }

    fn wait(&self) -> Option<Arc<MachineReady>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*s {
                GateState::Closed => s = self.opened.wait(s).unwrap_or_else(|e| e.into_inner()),
                GateState::Open(ready) => return Some(ready.clone()),
                GateState::Aborted => return None,
            }
        }
    }
}

/// What a vCPU thread leaves behind.
#[derive(Debug, Default)]
pub struct VcpuOutcome {
    pub stats: ExitStats,
    /// Guest RIP samples (RIP, CPL, likely caller) → count, with `sample_rip`.
    pub samples: std::collections::BTreeMap<(u64, u8, u64), u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM_CREATE_VCPU: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("KVM_SET_MSRS: {0}")]
    Msrs(kvm_ioctls::Error),
    #[error("KVM_SET_MSRS refused MSR {0:#x}")]
    MsrRefused(u32),
    #[error("LAPIC setup: {0}")]
    Lapic(kvm_ioctls::Error),
    #[error("boot registers: {0}")]
    Registers(kvm_ioctls::Error),
    #[error("cannot build the MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
    #[error("{0}")]
    Confine(crate::confine::Error),
}

/// Spawns the thread for vCPU `id`: it creates the vCPU, reports on
/// `created`, waits at `gate`, then runs; it answers requests on
/// `responses`.
pub fn spawn(
    id: u8,
    wakeup: Arc<handle::Wakeup>,
    vm: Arc<VmFd>,
    gate: Arc<StartGate>,
    created: Sender<(u8, Result<(), Error>)>,
    responses: Sender<(u8, VcpuResponse)>,
) -> std::io::Result<VcpuHandle> {
    let (requests_tx, requests) = mpsc::channel();
    let vcpu_wakeup = wakeup.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu {id}"))
        .spawn(move || {
            let fd = match vm.create_vcpu(u64::from(id)) {
                // Filtered before its first KVM_RUN (and before the gate).
                Ok(fd) => match crate::confine::install(crate::confine::ThreadKind::Vcpu) {
                    Ok(()) => {
                        let _ = created.send((id, Ok(())));
                        fd
                    }
                    Err(e) => {
                        let _ = created.send((id, Err(Error::Confine(e))));
                        return VcpuOutcome::default();
                    }
                },
                Err(e) => {
                    let _ = created.send((id, Err(Error::Create(e))));
                    return VcpuOutcome::default();
                }
            };
            drop(created);
            let Some(ready) = gate.wait() else {
                return VcpuOutcome::default();
            };
            // A panic from here on stops the machine, naming this thread.
            let lifecycle = ready.lifecycle.clone();
            lifecycle
                .supervise(move || {
                    if let Start::Boot(entry) = ready.start {
                        if let Err(e) = setup::configure(&fd, id, &ready, entry) {
                            ready
                                .lifecycle
                                .request_stop(StopReason::VmmError(format!("vCPU {id}: {e}")));
                            return VcpuOutcome::default();
                        }
                    }
                    let mut vcpu =
                        run::Vcpu::new(id, fd, ready.clone(), vcpu_wakeup, requests, responses);
                    if let Start::Restore(states) = &ready.start {
                        // Answered to the restore, which stops the machine on error.
                        if !vcpu.restore(states.iter().find(|s| s.id == id)) {
                            return VcpuOutcome::default();
                        }
                    }
                    vcpu.run_loop()
                })
                .unwrap_or_default()
        })?;
    Ok(VcpuHandle::new(id, requests_tx, wakeup, thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gate_releases_waiters_or_aborts_them() {
        let gate = Arc::new(StartGate::default());
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait().is_none());
        std::thread::sleep(Duration::from_millis(10));
        gate.abort();
        assert!(waiter.join().unwrap(), "aborted gate returns None");
    }
}
