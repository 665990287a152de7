//! Step 5 of a VM's life: why it ended. Whoever sees the end first (a
//! device, a vCPU, a signal handler) records the reason here; every other
//! thread notices and winds down.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Why the machine stopped. Decides the process exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered itself off (ACPI S5).
    PowerOff,
    /// The guest reset itself (i8042, ACPI reset register, system event).
    Reset,
    /// The guest died in a way the VMM can see; the report says how.
    GuestCrash { vcpu: usize, report: String },
    /// A host signal (SIGINT, SIGTERM, SIGHUP) asked us to stop.
    Signal(i32),
    /// The user asked to quit from the console (Ctrl-A x).
    ConsoleQuit,
    /// Tsubame itself failed while running the machine.
    VmmError(String),
    /// One of Tsubame's threads died (a panic, or an error it cannot go
    /// on after): the machine cannot be trusted to make progress.
    ThreadDied { thread: String, cause: String },
}

impl StopReason {
    /// The documented exit status: 0 the guest ended itself, 1 Tsubame
    /// could not run it, 2 the guest crashed, 128+N host signal N.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::PowerOff | StopReason::Reset | StopReason::ConsoleQuit => 0,
            StopReason::VmmError(_) => 1,
            StopReason::GuestCrash { .. } | StopReason::ThreadDied { .. } => 2,
            StopReason::Signal(n) => 128 + n,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StopReason::PowerOff => write!(f, "guest powered off"),
            StopReason::Reset => write!(f, "guest reset"),
            StopReason::GuestCrash { vcpu, .. } => write!(f, "guest crashed on vCPU {vcpu}"),
            StopReason::Signal(n) => write!(f, "stopped by host signal {n}"),
            StopReason::ConsoleQuit => write!(f, "quit from the console"),
            StopReason::VmmError(e) => write!(f, "VMM error: {e}"),
            StopReason::ThreadDied { thread, cause } => {
                write!(f, "thread '{thread}' died: {cause}")
            }
        }
    }
}

/// The machine's fate, shared by every thread.
pub struct Lifecycle {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Written once when the machine starts stopping; the main loop polls it.
    pub stop_event: EventFd,
    /// vCPU 0's first KVM_RUN and the stop request: how long the guest ran,
    /// without the machine's build and teardown.
    first_run: OnceLock<Instant>,
    stopped_at: OnceLock<Instant>,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Lifecycle> {
        Ok(Lifecycle {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            stop_event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            first_run: OnceLock::new(),
            stopped_at: OnceLock::new(),
        })
    }

    /// vCPU 0 is about to enter the guest for the first time (also a
    /// start-up phase mark).
    pub fn mark_first_run(&self) {
        let _ = self.first_run.set(Instant::now());
        crate::trace::mark("vcpu 0 first KVM_RUN");
    }

    /// From vCPU 0's first KVM_RUN to the stop request, once both happened.
    pub fn guest_time(&self) -> Option<Duration> {
        let (a, b) = (self.first_run.get()?, self.stopped_at.get()?);
        Some(b.saturating_duration_since(*a))
    }

    /// Records `reason` if the machine is not already stopping. Returns
    /// whether this call was the one that stopped it.
    pub fn request_stop(&self, reason: StopReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        let _ = self.stopped_at.set(Instant::now());
        crate::trace::mark("stop requested");
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_event.write(1);
        true
    }

    /// Cheap check for the vCPU loop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

impl Lifecycle {
    /// Runs the body of one of the machine's threads. A panic in it stops
    /// the machine (`ThreadDied`, naming the thread and the panic) instead
    /// of leaving the others to run on without it; `None` then.
    pub fn supervise<T>(&self, body: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(v) => Some(v),
            Err(payload) => {
                self.thread_died(panic_message(payload.as_ref()));
                None
            }
        }
    }

    /// The calling thread cannot go on: stops the machine with its name.
    pub fn thread_died(&self, cause: String) {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        log::error!("thread '{thread}' died: {cause}");
        self.request_stop(StopReason::ThreadDied { thread, cause });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let l = Lifecycle::new().unwrap();
        assert!(!l.is_stopping());
        assert!(l.request_stop(StopReason::PowerOff));
        assert!(!l.request_stop(StopReason::Signal(15)));
        assert!(l.is_stopping());
        assert_eq!(l.reason(), Some(StopReason::PowerOff));
        assert_eq!(l.stop_event.read().unwrap(), 1);
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(StopReason::PowerOff.exit_code(), 0);
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::VmmError("x".into()).exit_code(), 1);
        let crash = StopReason::GuestCrash {
            vcpu: 0,
            report: String::new(),
        };
        assert_eq!(crash.exit_code(), 2);
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_code(), 130);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        let died = StopReason::ThreadDied {
            thread: "virtio".into(),
            cause: "x".into(),
        };
        assert_eq!(died.exit_code(), 2);
    }

    #[test]
    fn a_panicking_thread_stops_the_machine_with_its_name_and_cause() {
        let l = std::sync::Arc::new(Lifecycle::new().unwrap());
        let l2 = l.clone();
        let out = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || l2.supervise(|| -> u8 { panic!("boom {}", 7) }))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out, None);
        assert_eq!(
            l.reason(),
            Some(StopReason::ThreadDied {
                thread: "probe".into(),
                cause: "boom 7".into()
            })
        );
        assert_eq!(l.supervise(|| 5), Some(5), "no panic, the body's value");
    }
}
