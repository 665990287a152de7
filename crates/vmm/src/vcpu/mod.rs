//! Step 2 and 3 of a VM's life, for each vCPU: a host thread creates its
//! vCPU, waits at the [`StartGate`] until the whole machine is initialised
//! (qemu-kvm's `ap_main_loop` waiting for `qemu_system_ready`), configures
//! itself, and runs KVM_RUN until the machine stops.

pub mod complete;
pub mod exit;
pub mod gaps;
pub mod report;
pub mod stats;
pub mod syscall;

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_lapic_state, CpuId};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::boot::cpuid::{self, CpuProfile};
use crate::boot::{msrs, BootRegs, Entry};
use crate::devices::Bus;
use crate::lifecycle::{Lifecycle, StopReason};
use crate::vm::GuestMemory;
use exit::{ExitAction, ExitHandler};
use stats::{ExitKind, ExitStats};

/// What every vCPU thread receives once the machine is ready to run.
pub struct MachineReady {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub lifecycle: Arc<Lifecycle>,
    pub memory: GuestMemory,
    pub entry: Entry,
    pub supported_cpuid: CpuId,
    pub cpu_profile: CpuProfile,
    pub vcpu_count: u8,
    /// Complete instructions KVM's emulator rejects (emulation-only hosts).
    pub complete_gaps: bool,
    /// Record the guest RIP at every kick (the main loop kicks on a timer).
    pub sample_rip: bool,
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
}

/// Signal used to kick a vCPU out of KVM_RUN. Its handler does nothing:
/// the point is the EINTR.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler (idempotent).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

/// One vCPU thread.
pub struct VcpuThread {
    pub id: u8,
    pub handle: JoinHandle<VcpuOutcome>,
}

impl VcpuThread {
    /// Interrupts KVM_RUN once (the loop goes on).
    pub fn kick(&self) {
        let _ = self.handle.kill(kick_signal());
    }

    /// Kicks the thread until it leaves KVM_RUN and ends, then joins it.
    /// Re-kicking covers a kick that lands just before KVM_RUN is entered.
    pub fn stop_and_join(self) -> std::thread::Result<VcpuOutcome> {
        'kick: while !self.handle.is_finished() {
            let _ = self.handle.kill(kick_signal());
            // Poll briefly before kicking again: a thread leaving KVM_RUN
            // ends within microseconds.
            for _ in 0..100 {
                if self.handle.is_finished() {
                    break 'kick;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.handle.join()
    }
}

/// Spawns the thread for vCPU `id`: it creates the vCPU, reports on
/// `created`, then waits at `gate`.
pub fn spawn(
    id: u8,
    vm: Arc<VmFd>,
    gate: Arc<StartGate>,
    created: Sender<(u8, Result<(), Error>)>,
) -> std::io::Result<VcpuThread> {
    let handle = std::thread::Builder::new()
        .name(format!("vcpu {id}"))
        .spawn(move || {
            let fd = match vm.create_vcpu(u64::from(id)) {
                Ok(fd) => {
                    let _ = created.send((id, Ok(())));
                    fd
                }
                Err(e) => {
                    let _ = created.send((id, Err(Error::Create(e))));
                    return VcpuOutcome::default();
                }
            };
            drop(created);
            let Some(ready) = gate.wait() else {
                return VcpuOutcome::default();
            };
            if let Err(e) = configure(&fd, id, &ready) {
                ready
                    .lifecycle
                    .request_stop(StopReason::VmmError(format!("vCPU {id}: {e}")));
                return VcpuOutcome::default();
            }
            run(fd, id, &ready)
        })?;
    Ok(VcpuThread { id, handle })
}

/// LVT entries in the LAPIC register page and the delivery modes we set.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b: Vec<u8> = l.regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// CPUID, MSRs, LAPIC LINT0/LINT1, and (boot vCPU only) entry registers.
/// APs stay in the in-kernel LAPIC's wait-for-SIPI state.
fn configure(fd: &VcpuFd, id: u8, ready: &MachineReady) -> Result<(), Error> {
    let cpuid = cpuid::shape(
        &ready.supported_cpuid,
        u32::from(id),
        u32::from(ready.vcpu_count),
        ready.cpu_profile,
    );
    fd.set_cpuid2(&cpuid).map_err(Error::Cpuid)?;

    let boot_msrs = msrs::boot_msrs_fam().map_err(Error::MsrList)?;
    let written = fd.set_msrs(&boot_msrs).map_err(Error::Msrs)?;
    if let Some(refused) = boot_msrs.as_slice().get(written) {
        return Err(Error::MsrRefused(refused.index));
    }

    let mut lapic = fd.get_lapic().map_err(Error::Lapic)?;
    let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT0,
        set_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT1,
        set_delivery_mode(lint1, APIC_MODE_NMI),
    );
    fd.set_lapic(&lapic).map_err(Error::Lapic)?;

    if id == 0 {
        let sregs = fd.get_sregs().map_err(Error::Registers)?;
        let boot = BootRegs::new(ready.entry, sregs);
        fd.set_sregs(&boot.sregs).map_err(Error::Registers)?;
        fd.set_regs(&boot.regs).map_err(Error::Registers)?;
        fd.set_fpu(&boot.fpu).map_err(Error::Registers)?;
    }
    Ok(())
}

/// The main loop: KVM_RUN, dispatch, repeat, until the machine stops.
fn run(mut fd: VcpuFd, id: u8, ready: &MachineReady) -> VcpuOutcome {
    let mut handler = ExitHandler::new(ready.pio.clone(), ready.mmio.clone());
    let mut repair = syscall::SyscallRepair::default();
    let mut samples = std::collections::BTreeMap::new();
    let lifecycle = &ready.lifecycle;
    if id == 0 {
        log::debug!(
            "vCPU 0: first KVM_RUN {:.3} ms after start",
            crate::since_start().as_secs_f64() * 1e3
        );
    }
    while !lifecycle.is_stopping() {
        let result = fd.run();
        let action = match result {
            Ok(exit) => handler.handle(exit),
            Err(e) if e.errno() == libc::EINTR => {
                handler.stats.record(ExitKind::Kick, None, Duration::ZERO);
                if ready.sample_rip {
                    if let (Ok(r), Ok(s)) = (fd.get_regs(), fd.get_sregs()) {
                        let cpl = report::cpl(&s);
                        let caller = if cpl == 0 {
                            stack_caller(&fd, &ready.memory, r.rsp)
                        } else {
                            0
                        };
                        *samples.entry((r.rip, cpl, caller)).or_insert(0u64) += 1;
                    }
                }
                ExitAction::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::Fatal(exit::Fatal::Unexpected(format!("KVM_RUN failed: {e}"))),
        };
        let action = match action {
            ExitAction::Debug { pc } => match repair.on_breakpoint(&fd, &ready.memory, pc) {
                Ok(syscall::Breakpoint::Syscall) => {
                    handler.stats.record_completion("syscall (repaired)".into());
                    ExitAction::Continue
                }
                Ok(syscall::Breakpoint::PageFault) => {
                    handler
                        .stats
                        .record_completion("page fault (let through)".into());
                    ExitAction::Continue
                }
                Ok(syscall::Breakpoint::Foreign) => ExitAction::Fatal(exit::Fatal::Unexpected(
                    format!("KVM_EXIT_DEBUG at {pc:#x}"),
                )),
                Err(e) => {
                    ExitAction::Fatal(exit::Fatal::Unexpected(format!("syscall repair: {e}")))
                }
            },
            ExitAction::WriteMsr { index, data } => {
                let done = if index == syscall::MSR_LSTAR {
                    repair
                        .on_lstar_write(&fd, &ready.memory, data)
                        .map_err(|e| e.to_string())
                } else {
                    write_msr(&fd, index, data)
                };
                match done {
                    Ok(()) => ExitAction::Continue,
                    Err(e) => {
                        ExitAction::Fatal(exit::Fatal::Unexpected(format!("WRMSR {index:#x}: {e}")))
                    }
                }
            }
            other => other,
        };
        match action {
            ExitAction::Continue | ExitAction::Debug { .. } | ExitAction::WriteMsr { .. } => {}
            ExitAction::Stop(reason) => {
                lifecycle.request_stop(reason);
            }
            ExitAction::Fatal(why) => {
                let mut cpu = report::snapshot(&mut fd, &why, &ready.memory);
                if ready.complete_gaps {
                    if let Some(ie) = cpu.internal.as_ref().filter(|ie| ie.suberror == 1) {
                        match gaps::handle_emulation_failure(&fd, &ready.memory, ie) {
                            gaps::Handled::Yes(what) => {
                                handler.stats.record_completion(what);
                                continue;
                            }
                            gaps::Handled::No(why) => cpu.note = Some(why),
                        }
                    }
                }
                cpu.history = handler.history();
                let report = report::render(usize::from(id), &why, &cpu);
                lifecycle.request_stop(StopReason::GuestCrash {
                    vcpu: usize::from(id),
                    report,
                });
            }
        }
    }
    VcpuOutcome {
        stats: handler.stats,
        samples,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
    }

    #[test]
    fn lapic_registers_round_trip() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT_LINT1, 0xdead_beef);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT1), 0xdead_beef);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT0), 0);
    }

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
