//! Steps 2 and 3 of a VM's life, for each vCPU: a host thread creates its
//! vCPU, waits at the [`StartGate`] until the whole machine is initialised
//! (qemu-kvm's `ap_main_loop` waiting for `qemu_system_ready`), configures
//! itself ([`setup`]), and runs the loop in [`run`] until asked to exit.
//!
//! - [`handle`]: the controller's [`VcpuHandle`] (request channel, kick).
//! - [`state`]: the per-vCPU state machine the requests drive.
//! - [`exit`]: what to do with each exit (new exit reasons go there).
//! - [`emulation`]: emulation-only-host repairs, behind one hook.

pub mod clock;
pub mod emulation;
pub mod exit;
mod gate;
pub mod handle;
pub mod report;
pub mod run;
pub mod setup;
pub mod state;
pub mod stats;

use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};

use crate::boot::cpuid::CpuProfile;
use crate::boot::Entry;
use crate::devices::Bus;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::vm::GuestMemory;
use clock::ExitClock;
pub use gate::{Gate, StartGate};
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
    pub cpu_profile: CpuProfile,
    /// Complete instructions KVM's emulator rejects (emulation-only hosts).
    pub complete_gaps: bool,
    /// KVM passes registers and system registers in the kvm_run page
    /// (KVM_CAP_SYNC_REGS).
    pub sync_regs: bool,
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

/// What a booting vCPU needs to configure itself before the start gate
/// (CPUID, MSRs, LAPIC): known once KVM is open, long before the kernel is
/// loaded, so this work overlaps the rest of the machine's set-up.
pub struct CpuPlan {
    pub supported_cpuid: CpuId,
    pub cpu_profile: CpuProfile,
    pub vcpu_count: u8,
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

/// The gates a vCPU thread passes before its first KVM_RUN.
pub struct Gates {
    /// A boot's [`CpuPlan`]; `None` for a restore (the snapshot has it all).
    pub plan: Option<Arc<Gate<CpuPlan>>>,
    pub start: Arc<StartGate>,
}

/// Creates the vCPU, confines the thread, and for a boot configures the
/// CPU from the plan: everything that can be done before the machine is
/// complete. The exit clock is read here too: KVM's TSC rate for a fresh
/// vCPU is the host's (a restore may set the vCPU's own later).
fn prepare(
    id: u8,
    vm: &VmFd,
    plan: Option<&Gate<CpuPlan>>,
) -> Result<Option<(VcpuFd, ExitClock)>, Error> {
    let fd = vm.create_vcpu(u64::from(id)).map_err(Error::Create)?;
    let clock = ExitClock::new(fd.get_tsc_khz().ok());
    // Filtered before its first KVM_RUN (and before the gate).
    crate::confine::install(crate::confine::ThreadKind::Vcpu).map_err(Error::Confine)?;
    if let Some(plan) = plan {
        let Some(plan) = plan.wait() else {
            return Ok(None);
        };
        setup::configure_cpu(&fd, id, &plan)?;
    }
    Ok(Some((fd, clock)))
}

/// Spawns the thread for vCPU `id`: it creates and prepares the vCPU,
/// reports on `created`, waits at the start gate, then runs; it answers
/// requests on `responses`.
pub fn spawn(
    id: u8,
    wakeup: Arc<handle::Wakeup>,
    vm: Arc<VmFd>,
    gates: Gates,
    created: Sender<(u8, Result<(), Error>)>,
    responses: Sender<(u8, VcpuResponse)>,
) -> std::io::Result<VcpuHandle> {
    let (requests_tx, requests) = handle::request_channel();
    let vcpu_wakeup = wakeup.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu {id}"))
        .spawn(move || {
            let (fd, clock) = match prepare(id, &vm, gates.plan.as_deref()) {
                Ok(Some(prepared)) => {
                    if id == 0 {
                        crate::trace::mark("vcpu 0 prepared");
                    }
                    let _ = created.send((id, Ok(())));
                    prepared
                }
                Ok(None) => return VcpuOutcome::default(),
                Err(e) => {
                    let _ = created.send((id, Err(e)));
                    return VcpuOutcome::default();
                }
            };
            drop(created);
            if id == 0 && crate::faults::armed(crate::faults::VCPU_LATE_AT_GATE) {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let gate = gates.start;
            let Some(ready) = gate.arrive_and_wait() else {
                return VcpuOutcome::default();
            };
            if id == 0 {
                crate::trace::mark("vcpu 0 through the gate");
            }
            // A panic from here on stops the machine, naming this thread.
            let lifecycle = ready.lifecycle.clone();
            lifecycle
                .supervise(move || {
                    if let Start::Boot(entry) = ready.start {
                        if let Err(e) = setup::set_entry(&fd, id, entry) {
                            ready
                                .lifecycle
                                .request_stop(StopReason::VmmError(format!("vCPU {id}: {e}")));
                            return VcpuOutcome::default();
                        }
                    }
                    let mut vcpu = run::Vcpu::new(
                        id,
                        fd,
                        clock,
                        ready.clone(),
                        vcpu_wakeup,
                        requests,
                        responses,
                    );
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
        let gate = Arc::new(Gate::<u32>::default());
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait().is_none());
        std::thread::sleep(Duration::from_millis(10));
        gate.abort();
        assert!(waiter.join().unwrap(), "aborted gate returns None");
    }
}
