//! The controller's side of a vCPU thread: a request channel and a kick.
//!
//! A kick is a signal whose handler sets `kvm_run.immediate_exit` on the
//! vCPU's own thread: a vCPU inside KVM_RUN leaves it with EINTR, and one
//! about to enter returns at once, so a kick is never lost and never needs
//! repeating (no periodic re-kicks).

use std::cell::Cell;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, Killable};

use super::state::VcpuRequest;
use super::VcpuOutcome;

thread_local! {
    /// This thread's `kvm_run` page, once it has a vCPU.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal used to kick a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's kvm_run mapping, registered by
        // a live `KickRegistration` and valid until it drops; a u8
        // volatile store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (idempotent).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

/// While alive, kicks of this thread set `immediate_exit` in its `kvm_run`
/// page, which must stay mapped until it is dropped (the vCPU fd owns it).
pub struct KickRegistration(());

impl KickRegistration {
    pub fn new(run: *mut kvm_run) -> KickRegistration {
        KVM_RUN.with(|c| c.set(run));
        KickRegistration(())
    }
}

impl Drop for KickRegistration {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// One vCPU thread, as the controller sees it.
pub struct VcpuHandle {
    pub id: u8,
    requests: Sender<VcpuRequest>,
    thread: JoinHandle<VcpuOutcome>,
}

impl VcpuHandle {
    pub fn new(id: u8, requests: Sender<VcpuRequest>, thread: JoinHandle<VcpuOutcome>) -> Self {
        VcpuHandle {
            id,
            requests,
            thread,
        }
    }

    /// Queues `request` and kicks the vCPU so it sees it now.
    pub fn send(&self, request: VcpuRequest) {
        let _ = self.requests.send(request);
        self.kick();
    }

    /// Interrupts KVM_RUN once (the loop goes on).
    pub fn kick(&self) {
        let _ = self.thread.kill(kick_signal());
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread (after an `Exit` request, or a gate abort).
    pub fn join(self) -> std::thread::Result<VcpuOutcome> {
        self.thread.join()
    }
}
