//! Repairs for emulation-only hosts (`kvm_pvm` without VT-x/AMD-V), behind
//! one hook so the core loop stays the seed's. On such a host guest kernel
//! code runs in KVM's instruction emulator, which rejects some
//! instructions ([`complete`], [`gaps`]) and enters a user `syscall` at
//! CPL3 ([`syscall`]). Elsewhere the hook is absent and none of this runs.

pub mod complete;
pub mod gaps;
pub mod syscall;

use kvm_ioctls::VcpuFd;

use super::exit::{ExitAction, Fatal};
use super::report;
use super::stats::ExitStats;
use crate::vm::GuestMemory;

/// The per-vCPU hook: sees every exit action the core dispatch could not
/// finish by itself, and either finishes it or hands it back.
#[derive(Debug, Default)]
pub struct EmulationRepairs {
    syscall: syscall::SyscallRepair,
    /// Why the last emulation failure was not completed, for the report.
    note: Option<String>,
}

impl EmulationRepairs {
    /// `sync_regs`: KVM can pass registers and system registers in the
    /// kvm_run page (KVM_CAP_SYNC_REGS), which saves every ioctl of an
    /// ordinary page fault's stop.
    pub fn new(sync_regs: bool) -> EmulationRepairs {
        EmulationRepairs {
            syscall: syscall::SyscallRepair::new(sync_regs),
            note: None,
        }
    }

    /// What the core loop should do with `action`, after the repairs had
    /// their look at it. What they did is counted in `stats`.
    pub fn resolve(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemory,
        action: ExitAction,
        stats: &mut ExitStats,
    ) -> ExitAction {
        match action {
            ExitAction::Debug { pc } => match self.syscall.on_breakpoint(fd, mem, pc) {
                Ok(syscall::Breakpoint::Syscall) => {
                    stats.record_completion("syscall (repaired)".into());
                    ExitAction::Continue
                }
                Ok(syscall::Breakpoint::PageFault) => {
                    stats.record_completion("page fault (let through)".into());
                    ExitAction::Continue
                }
                Ok(syscall::Breakpoint::Foreign) => {
                    ExitAction::Fatal(Fatal::Unexpected(format!("KVM_EXIT_DEBUG at {pc:#x}")))
                }
                Err(e) => ExitAction::Fatal(Fatal::Unexpected(format!("syscall repair: {e}"))),
            },
            ExitAction::WriteMsr { index, data } => {
                let done = if index == syscall::MSR_LSTAR {
                    self.syscall
                        .on_lstar_write(fd, mem, data)
                        .map_err(|e| e.to_string())
                } else {
                    write_msr(fd, index, data)
                };
                match done {
                    Ok(()) => ExitAction::Continue,
                    Err(e) => {
                        ExitAction::Fatal(Fatal::Unexpected(format!("WRMSR {index:#x}: {e}")))
                    }
                }
            }
            ExitAction::Fatal(Fatal::InternalError) => {
                let Some(ie) = report::internal_error(fd).filter(|ie| ie.suberror == 1) else {
                    return action;
                };
                match gaps::handle_emulation_failure(fd, mem, &ie) {
                    gaps::Handled::Yes(what) => {
                        stats.record_completion(what);
                        ExitAction::Continue
                    }
                    gaps::Handled::No(why) => {
                        self.note = Some(why);
                        action
                    }
                }
            }
            other => other,
        }
    }

    /// The state a snapshot keeps.
    pub fn state(&self) -> syscall::RepairState {
        self.syscall.state()
    }

    /// Continues a saved repair on this vCPU.
    pub fn restore(
        &mut self,
        fd: &mut VcpuFd,
        mem: &GuestMemory,
        s: syscall::RepairState,
    ) -> Result<(), String> {
        self.syscall.restore(fd, mem, s).map_err(|e| e.to_string())
    }

    /// Why the last failure was left to the crash report, if one was.
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }
}

/// Performs a guest WRMSR that the MSR filter sent to us.
fn write_msr(fd: &VcpuFd, index: u32, data: u64) -> Result<(), String> {
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|e| format!("{e:?}"))?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => Err("refused".into()),
        Err(e) => Err(e.to_string()),
    }
}
