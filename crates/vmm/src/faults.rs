//! Faults a test can inject by name, to prove that Tsubame survives what
//! no guest can make happen on purpose (a thread that panics, an event
//! loop that fails). Compiled in only with the `test-hooks` feature, which
//! README's test command turns on and a release build never has:
//! `TSUBAME_TEST_FAULT=<point>` arms one point.

/// A vCPU thread panics at its first exit.
pub const VCPU_PANIC: &str = "vcpu-panic";
/// The device thread panics at its first queue notification.
pub const VIRTIO_PANIC: &str = "virtio-panic";
/// The device thread's event loop returns an error at its first event.
pub const VIRTIO_ERROR: &str = "virtio-error";
/// The API thread panics at its first request.
pub const API_PANIC: &str = "api-panic";
/// vCPU 0 reaches the start gate 200 ms after reporting itself created:
/// after the builder has every report and has moved on.
pub const VCPU_LATE_AT_GATE: &str = "vcpu-late-at-gate";
/// The kernel refuses virtio-blk an io_uring (as with io_uring_disabled=2).
pub const NO_IO_URING: &str = "no-io-uring";
/// Emulation-only hosts: the guest keeps KVM's PV TLB flush feature, the
/// trigger of issue 10's TLS fault (tests/linux_process_starts.rs' control).
pub const SHOW_PV_TLB_FLUSH: &str = "show-pv-tlb-flush";

/// A thread of the named kind makes a system call no filter allows
/// (`getppid`): `seccomp-vcpu`, `seccomp-virtio`, `seccomp-api`,
/// `seccomp-vmm`, `seccomp-console`.
pub fn forbidden_call(kind: &str) {
    if armed_prefix("seccomp-", kind) {
        // SAFETY: getppid has no arguments and no effect.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// The main thread tries to open a path read-only and says on stderr
/// whether it could (`open-vmm:PATH`): what Landlock leaves it.
pub fn try_open() {
    if let Some(path) = armed_value("open-vmm:") {
        match std::fs::File::open(&path) {
            Ok(_) => eprintln!("test open {path}: opened"),
            Err(e) => eprintln!("test open {path}: {e}"),
        }
    }
}

/// `TSUBAME_TEST_FAULT`, read once: the vCPU loop asks at every exit.
#[cfg(feature = "test-hooks")]
fn setting() -> Option<&'static str> {
    static SETTING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SETTING
        .get_or_init(|| std::env::var("TSUBAME_TEST_FAULT").ok())
        .as_deref()
}

#[cfg(feature = "test-hooks")]
fn armed_value(prefix: &str) -> Option<String> {
    setting()?.strip_prefix(prefix).map(str::to_string)
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn armed_value(_prefix: &str) -> Option<String> {
    None
}

#[cfg(feature = "test-hooks")]
fn armed_prefix(prefix: &str, kind: &str) -> bool {
    setting()
        .and_then(|v| v.strip_prefix(prefix).map(|k| k == kind))
        .unwrap_or(false)
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
fn armed_prefix(_prefix: &str, _kind: &str) -> bool {
    false
}

/// Whether `point` is the armed fault.
#[cfg(feature = "test-hooks")]
pub fn armed(point: &str) -> bool {
    setting() == Some(point)
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn armed(_point: &str) -> bool {
    false
}
