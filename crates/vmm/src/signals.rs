//! Host signals that end the machine (SIGINT, SIGTERM, SIGHUP): the handler
//! only records the signal and writes an eventfd; the main loop does the
//! rest (kick vCPUs, join threads, restore the terminal).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static EVENT: OnceLock<EventFd> = OnceLock::new();
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST.store(num, Ordering::SeqCst);
    let fd = EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) on an eventfd is async-signal-safe; the buffer is
        // 8 valid bytes on this stack frame.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Installs the handlers once; returns the eventfd they write.
pub fn install() -> std::io::Result<&'static EventFd> {
    if let Some(e) = EVENT.get() {
        return Ok(e);
    }
    let event = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let event = EVENT.get_or_init(|| event);
    EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
    for sig in STOP_SIGNALS {
        register_signal_handler(sig, on_signal).map_err(std::io::Error::from)?;
    }
    Ok(event)
}

/// The last stop signal received, if any (clears it).
pub fn take() -> Option<i32> {
    match LAST.swap(0, Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

/// Whether a stop signal is waiting for the main loop (left for `take`):
/// long work on the main thread (a snapshot's memory write) checks it and
/// gives up, so that a signal still ends Tsubame within a second.
pub fn pending() -> bool {
    LAST.load(Ordering::SeqCst) != 0
}
