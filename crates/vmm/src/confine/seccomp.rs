//! Per-thread seccomp filters, built with rust-vmm's `seccompiler` from
//! the allow-lists in `syscalls.rs`. `kill` (the default) traps a call that
//! is not on the thread's list: the SIGSYS handler writes one line naming
//! the thread and the call and ends the process with status 159 (as if
//! killed by SIGSYS, 128 + 31). `log` lets such a call through and has the
//! kernel log it (audit); `off` installs nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The exit status after a forbidden system call.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 128 + libc::SIGSYS;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    #[default]
    Kill,
    Log,
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("--seccomp {s:?}: kill, log or off")),
        }
    }
}

/// The kinds of thread Tsubame runs; each has its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: builds the machine, runs the event loop, answers
    /// the API, snapshots.
    Vmm,
    /// The API server (HTTP on the Unix socket).
    Api,
    /// One per vCPU: KVM_RUN and exit dispatch, port and MMIO devices.
    Vcpu,
    /// The virtio device thread: queues, disks, taps, vsock sockets.
    Device,
    /// Writes the guest console to stdout.
    Console,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp filter for the {0:?} thread: {1}")]
    Build(ThreadKind, String),
    #[error("seccomp filter for the {0:?} thread: cannot install it: {1}")]
    Install(ThreadKind, seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode every later `install` uses; in `kill` mode also installs
/// the SIGSYS handler that reports a forbidden call.
pub fn set_mode(mode: SeccompMode) -> Result<(), Error> {
    MODE.store(mode as u8, Ordering::SeqCst);
    if mode != SeccompMode::Off {
        // The default hook symbolises a backtrace (RUST_BACKTRACE): it
        // opens and maps the binary, which no filtered thread may. The
        // panic is reported (and the machine stopped) all the same.
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            eprintln!(
                "thread '{}' {info} (no backtrace under seccomp; --seccomp off for one)",
                thread.name().unwrap_or("unnamed")
            );
        }));
    }
    if mode == SeccompMode::Kill {
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(Error::Handler)?;
    }
    Ok(())
}

pub fn mode() -> SeccompMode {
    match MODE.load(Ordering::SeqCst) {
        0 => SeccompMode::Kill,
        1 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

/// Installs `kind`'s filter on the calling thread (and `no_new_privs`,
/// which seccompiler sets first). Threads the caller starts later inherit
/// it and then add their own.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    let mismatch = match mode() {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Kill => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let program = compiled(kind, mismatch)?;
    seccompiler::apply_filter(&program).map_err(|e| Error::Install(kind, e))
}

/// Each kind's program is compiled once per process: every vCPU thread
/// installs the same one, and a restore or a bench builds machines again.
fn compiled(kind: ThreadKind, mismatch: SeccompAction) -> Result<Arc<BpfProgram>, Error> {
    type Cache = Vec<((ThreadKind, SeccompAction), Arc<BpfProgram>)>;
    static PROGRAMS: Mutex<Cache> = Mutex::new(Vec::new());
    let mut cache = PROGRAMS.lock().unwrap_or_else(|p| p.into_inner());
    let key = (kind, mismatch);
    if let Some((_, p)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(p.clone());
    }
    let program = Arc::new(build(kind, key.1.clone())?);
    cache.push((key, program.clone()));
    Ok(program)
}

fn build(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, Error> {
    let fail = |e: String| Error::Build(kind, e);
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        super::syscalls::allowed(kind).map_err(|e| fail(e.to_string()))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| fail(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| fail(e.to_string()))
}

/// Appends `s` to `buf` at `*len` (async-signal-safe: no allocation).
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    for &b in s {
        if *len < buf.len() {
            buf[*len] = b;
            *len += 1;
        }
    }
}

fn push_decimal(buf: &mut [u8], len: &mut usize, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(buf, len, &digits[i..]);
}

/// SIGSYS from a filter: one line, then exit. Only async-signal-safe calls
/// (prctl, write, _exit), which every filter allows.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // For SIGSYS the kernel fills `_sigsys`: call address (8 bytes at 16),
    // then the system call number (an int at 24).
    // SAFETY: `info` is the kernel's siginfo for this signal, at least 128
    // bytes long.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let mut line = [0u8; 160];
    let mut len = 0;
    push(&mut line, &mut len, b"tsubame: thread '");
    push(&mut line, &mut len, &name[..name_len]);
    push(&mut line, &mut len, b"' made a forbidden system call: ");
    push_decimal(&mut line, &mut len, nr as u32);
    if let Some(n) = super::syscalls::name(i64::from(nr)) {
        push(&mut line, &mut len, b" (");
        push(&mut line, &mut len, n.as_bytes());
        push(&mut line, &mut len, b")");
    }
    push(&mut line, &mut len, b"; stopped (seccomp)\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `line` is valid
    // for `len` bytes.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_has_a_filter_that_builds() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Api,
            ThreadKind::Vcpu,
            ThreadKind::Device,
            ThreadKind::Console,
        ] {
            let p = build(kind, SeccompAction::Trap).unwrap();
            assert!(p.len() > 10, "{kind:?}: {} instructions", p.len());
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("kill".parse(), Ok(SeccompMode::Kill));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert!("none".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 12];
        let mut n = 0;
        push_decimal(&mut b, &mut n, 110);
        assert_eq!(&b[..n], b"110");
    }
}
