//! The allow-lists: for each thread kind, the system calls Tsubame makes
//! on it (found by tracing the whole test suite, `strace -f -Y`), with
//! `ioctl` limited to the request types the thread needs and `mmap` /
//! `mprotect` to mappings that are not executable.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::seccomp::ThreadKind;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What every thread does: memory, locks, signals, its own end.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_prctl,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_fcntl,
    libc::SYS_sched_getaffinity,
];

const VMM: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_writev,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_getpid,
    libc::SYS_wait4,
    libc::SYS_sched_getaffinity,
    libc::SYS_getcwd,
    libc::SYS_readlink,
    libc::SYS_mincore,
    libc::SYS_sysinfo,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
];

const API: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_timerfd_settime,
    libc::SYS_shutdown,
];

/// timerfd_settime: vCPU 0 sets the PIT's timer when the guest programs
/// it (`split`, `userspace`).
const VCPU: &[i64] = &[libc::SYS_writev, libc::SYS_timerfd_settime];

const DEVICE: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    // virtio-blk's page-cache-only reads (RWF_NOWAIT), before io_uring.
    libc::SYS_preadv2,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    // virtio-blk's batched reads; the ring itself can only read.
    libc::SYS_io_uring_enter,
];

const CONSOLE: &[i64] = &[libc::SYS_writev, libc::SYS_poll];

/// musl's forms of calls the lists above name in glibc's: its
/// pthread_kill (a vCPU's kick) makes `tkill`, its open() `open`, and its
/// stat() and lstat() (Rust's std uses statx only with glibc) `stat` and
/// `lstat`. Allowed only where they are made, in a musl build.
#[cfg(target_env = "musl")]
fn musl_forms(kind: ThreadKind) -> &'static [i64] {
    match kind {
        ThreadKind::Vmm => &[
            libc::SYS_tkill,
            libc::SYS_open,
            libc::SYS_stat,
            libc::SYS_lstat,
        ],
        ThreadKind::Device => &[libc::SYS_tkill, libc::SYS_stat, libc::SYS_lstat],
        _ => &[libc::SYS_tkill],
    }
}

#[cfg(not(target_env = "musl"))]
fn musl_forms(_: ThreadKind) -> &'static [i64] {
    &[]
}

/// `ioctl` request types (bits 8-15): KVM's and the tun driver's.
const KVMIO: u64 = 0xae;
const TUNIO: u64 = b'T' as u64;
/// FIONBIO (set_nonblocking on a socket), TCGETS/TCSETS* (the terminal).
const FIONBIO: u64 = 0x5421;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const TIOCGWINSZ: u64 = 0x5413;

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// An ioctl whose request is of type `ty` (any number within it).
fn ioctl_type(ty: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![cond(1, SeccompCmpOp::MaskedEq(0xff00), ty << 8)?])
}

fn ioctl_exact(request: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, request)?])
}

/// `mmap`/`mprotect` whose protection (argument 2) has no PROT_EXEC.
fn not_executable() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(vec![SeccompRule::new(vec![cond(
        2,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])?])
}

/// `socket(AF_UNIX, …)` only.
fn unix_sockets() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(vec![SeccompRule::new(vec![cond(
        0,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )?])?])
}

pub fn allowed(kind: ThreadKind) -> Result<Rules, seccompiler::BackendError> {
    let mut rules = Rules::new();
    let (own, ioctls): (&[i64], Vec<SeccompRule>) = match kind {
        ThreadKind::Vmm => (
            VMM,
            vec![
                ioctl_type(KVMIO)?,
                ioctl_exact(FIONBIO)?,
                ioctl_exact(TCGETS)?,
                ioctl_exact(TCSETS)?,
                ioctl_exact(TCSETSW)?,
                ioctl_exact(TCSETSF)?,
                ioctl_exact(TIOCGWINSZ)?,
            ],
        ),
        ThreadKind::Api => (API, vec![ioctl_exact(FIONBIO)?]),
        // KVM_RUN and the state ioctls; a tap's offloads are set when the
        // guest's driver starts virtio-net (on the vCPU that writes it).
        ThreadKind::Vcpu => (VCPU, vec![ioctl_type(KVMIO)?, ioctl_type(TUNIO)?]),
        ThreadKind::Device => (DEVICE, vec![ioctl_exact(FIONBIO)?, ioctl_type(TUNIO)?]),
        ThreadKind::Console => (CONSOLE, Vec::new()),
    };
    for &nr in COMMON.iter().chain(own).chain(musl_forms(kind)) {
        rules.insert(nr, Vec::new());
    }
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctls);
    }
    rules.insert(libc::SYS_mmap, not_executable()?);
    rules.insert(libc::SYS_mprotect, not_executable()?);
    if kind == ThreadKind::Device {
        rules.insert(libc::SYS_socket, unix_sockets()?);
    }
    Ok(rules)
}

/// Names for the report of a forbidden call (the common ones).
pub fn name(nr: i64) -> Option<&'static str> {
    const NAMES: &[(i64, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_bind, "bind"),
        (libc::SYS_listen, "listen"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_getppid, "getppid"),
        (libc::SYS_unlink, "unlink"),
        (libc::SYS_unlinkat, "unlinkat"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_setuid, "setuid"),
        (libc::SYS_chmod, "chmod"),
        (libc::SYS_fchmodat, "fchmodat"),
        (libc::SYS_chown, "chown"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_ftruncate, "ftruncate"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_poll, "poll"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
    ];
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}
