//! The controller's side of a vCPU thread: a request channel and a kick.
//!
//! A kick is a signal whose handler sets `kvm_run.immediate_exit` on the
//! vCPU's own thread: a vCPU inside KVM_RUN leaves it with EINTR, and one
//! about to enter returns at once, so a kick is never lost and never needs
//! repeating (no periodic re-kicks).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvError, Sender};
use std::sync::{Arc, Condvar, Mutex};
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

/// The controller's requests to one vCPU. The vCPU looks for one before
/// every KVM_RUN; a channel's `try_recv` costs a full fence each time,
/// so a count of requests sent says first whether there is any.
pub fn request_channel() -> (RequestSender, RequestReceiver) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sent = Arc::new(AtomicU64::new(0));
    (
        RequestSender {
            tx,
            sent: sent.clone(),
        },
        RequestReceiver { rx, sent, taken: 0 },
    )
}

pub struct RequestSender {
    tx: Sender<VcpuRequest>,
    sent: Arc<AtomicU64>,
}

impl RequestSender {
    /// Queues `request`; false when the vCPU thread is gone. A sender
    /// kicks after this, so a request counted after the vCPU looked is
    /// seen at its next look.
    pub fn send(&self, request: VcpuRequest) -> bool {
        let sent = self.tx.send(request).is_ok();
        if sent {
            self.sent.fetch_add(1, Ordering::Release);
        }
        sent
    }
}

pub struct RequestReceiver {
    rx: Receiver<VcpuRequest>,
    sent: Arc<AtomicU64>,
    /// Requests taken off the channel.
    taken: u64,
}

impl RequestReceiver {
    /// The next request, if one was sent: one load when none was.
    pub fn try_recv(&mut self) -> Option<VcpuRequest> {
        // Not equal: a request sent and not yet taken, or one a blocking
        // `recv` took before its sender counted it (the channel says).
        if self.sent.load(Ordering::Acquire) == self.taken {
            return None;
        }
        let request = self.rx.try_recv().ok()?;
        self.taken += 1;
        Some(request)
    }

    /// Waits for the next request; an error when every sender is gone.
    pub fn recv(&mut self) -> Result<VcpuRequest, RecvError> {
        let request = self.rx.recv()?;
        self.taken += 1;
        Ok(request)
    }
}

/// How anyone reaches one vCPU thread: wakes it when it waits in user
/// space (halted, with the irqchip in Tsubame) and kicks it out of
/// KVM_RUN when it is in the guest. Neither is ever lost: the wake is a
/// flag the waiter consumes, the kick sets `immediate_exit`.
#[derive(Default)]
pub struct Wakeup {
    woken: Mutex<Woken>,
    changed: Condvar,
    /// The vCPU thread while it runs its loop.
    thread: Mutex<Option<Pthread>>,
}

/// A thread's `pthread_t`, only ever compared and signalled. musl's is a
/// pointer (glibc's an integer), which Rust does not let cross threads by
/// itself.
#[derive(Clone, Copy)]
struct Pthread(libc::pthread_t);

// SAFETY: a pthread_t is an opaque handle, not memory this code reads or
// writes; it is only passed to pthread_equal and pthread_kill, which any
// thread of the process may call with it.
unsafe impl Send for Pthread {}

impl Wakeup {
    /// Wakes a waiter and kicks the registered thread out of KVM_RUN.
    pub fn wake(&self) {
        if self.notify() {
            return;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Pthread(t)) = *thread {
            // SAFETY: pthread_self has no preconditions; `t` is a live
            // thread: it clears this entry (under this lock) before it
            // ends. The vCPU itself (an EOI it wrote) needs no kick: it
            // looks before its next KVM_RUN.
            unsafe {
                if libc::pthread_equal(t, libc::pthread_self()) == 0 {
                    libc::pthread_kill(t, kick_signal());
                }
            }
        }
    }

    /// Wakes a waiter only; true if the thread was waiting.
    pub fn notify(&self) -> bool {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        w.pending = true;
        self.changed.notify_one();
        w.waiting
    }

    /// Waits for the next `wake` (at once if one came since the last).
    pub fn wait(&self) {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        w.waiting = true;
        while !w.pending {
            w = self.changed.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        w.pending = false;
        w.waiting = false;
    }

    /// Makes the calling thread the one kicked, until the guard drops.
    pub fn register(self: &Arc<Self>) -> WakeupRegistration {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pthread(me));
        WakeupRegistration(self.clone())
    }
}

pub struct WakeupRegistration(Arc<Wakeup>);

impl Drop for WakeupRegistration {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[derive(Default)]
struct Woken {
    pending: bool,
    /// The thread waits in `wait` (not in KVM_RUN): no kick needed.
    waiting: bool,
}

/// One vCPU thread, as the controller sees it.
pub struct VcpuHandle {
    pub id: u8,
    requests: RequestSender,
    wakeup: Arc<Wakeup>,
    thread: JoinHandle<VcpuOutcome>,
}

impl VcpuHandle {
    pub fn new(
        id: u8,
        requests: RequestSender,
        wakeup: Arc<Wakeup>,
        thread: JoinHandle<VcpuOutcome>,
    ) -> Self {
        VcpuHandle {
            id,
            requests,
            wakeup,
            thread,
        }
    }

    /// Queues `request` and kicks the vCPU so it sees it now.
    pub fn send(&self, request: VcpuRequest) {
        let _ = self.requests.send(request);
        self.kick();
    }

    /// Interrupts KVM_RUN once, or a wait in user space (the loop goes
    /// on).
    pub fn kick(&self) {
        let _ = self.wakeup.notify();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_arrive_once_in_order_by_either_receive() {
        let (tx, mut rx) = request_channel();
        assert_eq!(rx.try_recv(), None);
        assert!(tx.send(VcpuRequest::Pause) && tx.send(VcpuRequest::ReportStats));
        assert_eq!(rx.try_recv(), Some(VcpuRequest::Pause));
        assert_eq!(rx.recv(), Ok(VcpuRequest::ReportStats));
        assert_eq!(rx.try_recv(), None);
        // A request sent from another thread while this one waits in
        // `recv`, then more: each is taken exactly once.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            for r in [VcpuRequest::Resume, VcpuRequest::Save, VcpuRequest::Exit] {
                assert!(tx.send(r));
            }
            tx
        });
        assert_eq!(rx.recv(), Ok(VcpuRequest::Resume));
        let tx = sender.join().unwrap();
        assert_eq!(rx.try_recv(), Some(VcpuRequest::Save));
        assert_eq!(rx.try_recv(), Some(VcpuRequest::Exit));
        assert_eq!(rx.try_recv(), None);
        drop(tx);
        assert!(rx.recv().is_err(), "every sender gone");
        let (tx, rx) = request_channel();
        drop(rx);
        assert!(!tx.send(VcpuRequest::Pause), "the vCPU thread is gone");
    }
}
