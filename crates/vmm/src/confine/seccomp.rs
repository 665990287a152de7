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

/// The kind's program: the system calls allowed whatever their arguments
/// first, one comparison each, then seccompiler's program for the calls
/// with argument rules (and the mismatch action). seccompiler spends five
/// instructions on each argument-free call, and the kernel's cost to
/// install a filter (checking, converting and compiling it, on every
/// thread at every start) grows with its length.
fn build(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, Error> {
    let fail = |e: String| Error::Build(kind, e);
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        super::syscalls::allowed(kind).map_err(|e| fail(e.to_string()))?;
    let number = |nr: i64| u32::try_from(nr).map_err(|_| fail(format!("system call {nr}")));
    let free: Vec<u32> = rules
        .iter()
        .filter(|(_, r)| r.is_empty())
        .map(|(&nr, _)| number(nr))
        .collect::<Result<_, _>>()?;
    rules.retain(|_, r| !r.is_empty());
    let ruled: Vec<u32> = rules
        .keys()
        .map(|&nr| number(nr))
        .collect::<Result<_, _>>()?;
    // A vCPU makes one KVM_RUN per exit: it is allowed first, before the
    // argument-free calls and seccompiler's walk of the ioctl rules (which
    // allow it too: its type is KVM's).
    let hot_ioctl = (kind == ThreadKind::Vcpu).then_some(KVM_RUN);
    let deny = u32::from(mismatch.clone());
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| fail(e.to_string()))?;
    let rest: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| fail(e.to_string()))?;
    let mut program = decision_tree(&free, &ruled, deny, hot_ioctl);
    program.extend(rest);
    Ok(program)
}

/// `AUDIT_ARCH_X86_64`: a call made through another ABI (`int $0x80`)
/// numbers its system calls differently.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u32 = 0xae80;
/// The low half of `seccomp_data.args[1]` (the rules compare 32 bits, as
/// the kernel's ioctl takes an `unsigned int` request).
const SECCOMP_DATA_ARG1_LO: u32 = 24;

/// The program's first part: checks the architecture (a wrong one kills
/// the process, as seccompiler's own check does), allows
/// `ioctl(_, hot_ioctl, …)` if given, loads the number and finds it in a
/// search tree: a call in `free` is allowed, a call in `ruled` goes on to
/// what follows (seccompiler's program for the argument rules), any other
/// gets `deny`.
///
/// A tree, not a row of comparisons, and no detour through seccompiler's
/// program for calls it would refuse anyway, because of what installing a
/// filter costs: the kernel runs the program once for every system call
/// number to find the ones it always allows (its action cache), so the
/// cost grows with the walk, not the length. A 150-comparison row took
/// 430 us to install here, the same 150 instructions with a 2-step walk
/// 25 us; two installs (the vCPU's, the main thread's) sit on the start
/// path.
fn decision_tree(free: &[u32], ruled: &[u32], deny: u32, hot_ioctl: Option<u32>) -> BpfProgram {
    let mut p = vec![
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ];
    if let Some(request) = hot_ioctl {
        p.extend([
            // Another call: on to the number's reload.
            insn(BPF_JEQ_K, 0, 3, libc::SYS_ioctl as u32),
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARG1_LO),
            insn(BPF_JEQ_K, 0, 1, request),
            insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        ]);
    }
    // A call on both lists has rules: seccompiler decides it.
    let mut calls: Vec<(u32, bool)> = free
        .iter()
        .filter(|nr| !ruled.contains(nr))
        .map(|&nr| (nr, false))
        .chain(ruled.iter().map(|&nr| (nr, true)))
        .collect();
    calls.sort_unstable();
    calls.dedup();
    let mut to_rest = Vec::new();
    search_tree(&mut p, &calls, deny, &mut to_rest);
    let rest = p.len();
    for j in to_rest {
        p[j].k = (rest - j - 1) as u32;
    }
    p
}

/// Calls a leaf of the tree compares one by one.
const LEAF: usize = 4;
// A leaf's comparisons jump to its ends with 8-bit offsets.
const _: () = assert!(LEAF + 2 < 255);

/// Appends the tree for the sorted `calls` (number, has rules): an inner
/// node sends numbers at or above its middle one to its right half (a JGE
/// over a JA, whose 32-bit offset no tree size outgrows); a leaf compares
/// each number, then ends in `RET deny` (no match), a JA to the rules
/// (recorded in `to_rest`, pointed there by the caller) and `RET ALLOW`.
fn search_tree(p: &mut BpfProgram, calls: &[(u32, bool)], deny: u32, to_rest: &mut Vec<usize>) {
    if calls.len() <= LEAF {
        let n = calls.len();
        for (i, &(nr, ruled)) in calls.iter().enumerate() {
            // Past the comparisons after this one and the RET deny: to
            // the JA (rules) or one further (allow).
            let jt = (n - i) as u8 + u8::from(!ruled);
            p.push(insn(BPF_JEQ_K, jt, 0, nr));
        }
        p.push(insn(BPF_RET_K, 0, 0, deny));
        to_rest.push(p.len());
        p.push(insn(BPF_JA, 0, 0, 0));
        p.push(insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
        return;
    }
    let mid = calls.len() / 2;
    // Below the middle: skip the JA into the left half, which follows.
    p.push(insn(BPF_JGE_K, 0, 1, calls[mid].0));
    let to_right = p.len();
    p.push(insn(BPF_JA, 0, 0, 0));
    search_tree(p, &calls[..mid], deny, to_rest);
    p[to_right].k = (p.len() - to_right - 1) as u32;
    search_tree(p, &calls[mid..], deny, to_rest);
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

    const KINDS: [ThreadKind; 5] = [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Console,
    ];

    #[test]
    fn every_thread_kind_has_a_filter_that_builds() {
        for kind in KINDS {
            let p = build(kind, SeccompAction::Trap).unwrap();
            assert!(p.len() > 10, "{kind:?}: {} instructions", p.len());
        }
    }

    /// A classic-BPF interpreter for what these programs use, over a
    /// `seccomp_data` (nr, arch, ip, args).
    fn run(p: &[seccompiler::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        run_counted(p, arch, nr, args).0
    }

    /// `run`, and how many instructions it took.
    fn run_counted(
        p: &[seccompiler::sock_filter],
        arch: u32,
        nr: u32,
        args: [u64; 6],
    ) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = &p[pc];
            pc += 1;
            steps += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                0x54 => acc &= i.k, // ALU AND K
                BPF_JA => pc += i.k as usize,
                BPF_JEQ_K => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),      // JGT K
                0x35 => pc += jump(acc >= i.k),     // JGE K
                0x45 => pc += jump(acc & i.k != 0), // JSET K
                BPF_RET_K => return (i.k, steps),
                c => panic!("instruction {c:#x} at {}", pc - 1),
            }
        }
    }

    /// Instructions run before the program decides.
    fn steps(p: &[seccompiler::sock_filter], nr: u32, args: [u64; 6]) -> usize {
        run_counted(p, AUDIT_ARCH_X86_64, nr, args).1
    }

    /// A vCPU's KVM_RUN is allowed within the first few instructions (7,
    /// against 50 for its other ioctls); nothing else takes the shortcut.
    #[test]
    fn kvm_run_is_decided_first_on_vcpu_threads() {
        let vcpu = build(ThreadKind::Vcpu, SeccompAction::Trap).unwrap();
        let ioctl = libc::SYS_ioctl as u32;
        let run_args = [9, u64::from(KVM_RUN), 0, 0, 0, 0];
        assert_eq!(
            run(&vcpu, AUDIT_ARCH_X86_64, ioctl, run_args),
            libc::SECCOMP_RET_ALLOW
        );
        assert!(
            steps(&vcpu, ioctl, run_args) <= 8,
            "{}",
            steps(&vcpu, ioctl, run_args)
        );
        let other = [9, 0xae9a, 0, 0, 0, 0];
        assert_eq!(
            run(&vcpu, AUDIT_ARCH_X86_64, ioctl, other),
            libc::SECCOMP_RET_ALLOW
        );
        assert!(steps(&vcpu, ioctl, other) > 8);
        // FIOSETOWN: no type a vCPU may use ('T' is the tun driver's).
        let foreign = [0, 0x8901, 0, 0, 0, 0];
        assert_ne!(
            run(&vcpu, AUDIT_ARCH_X86_64, ioctl, foreign),
            libc::SECCOMP_RET_ALLOW
        );
        // No other thread kind gets the shortcut.
        let vmm = build(ThreadKind::Vmm, SeccompAction::Trap).unwrap();
        assert!(steps(&vmm, ioctl, run_args) > 8);
    }

    /// What seccompiler alone makes of the same rules.
    fn seccompiler_only(kind: ThreadKind, mismatch: SeccompAction) -> BpfProgram {
        let rules = super::super::syscalls::allowed(kind).unwrap();
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
            .unwrap()
            .try_into()
            .unwrap()
    }

    #[test]
    fn the_short_programs_decide_every_call_as_seccompiler_alone_does() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Argument values the rules look at (mmap/mprotect's PROT_EXEC,
        // KVM ioctl types, AF_UNIX), and random ones.
        let mut values: Vec<u64> = vec![0, 1, 3, 4, 7, 0xae80, 0xae00, 0x4008_ae6a, 0xc008_ae05];
        values.extend((0..8).map(|_| random()));
        for kind in KINDS {
            for mismatch in [SeccompAction::Trap, SeccompAction::Log] {
                let short = build(kind, mismatch.clone()).unwrap();
                let long = seccompiler_only(kind, mismatch);
                assert!(
                    walk(&short) * 2 < walk(&long),
                    "{kind:?}: {} against {}",
                    walk(&short),
                    walk(&long)
                );
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                    for nr in 0..=470 {
                        for (j, &v) in values.iter().enumerate() {
                            let w = values[(j * 7 + 3) % values.len()];
                            let args = [v, v, v, w, v, w];
                            assert_eq!(
                                run(&short, arch, nr, args),
                                run(&long, arch, nr, args),
                                "{kind:?}, arch {arch:#x}, call {nr}, args {args:x?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Large trees and small: every listed call reaches its end (allowed,
    /// or on to what follows the tree), every other is denied, and a call
    /// on both lists goes to the rules.
    #[test]
    fn decision_trees_send_every_call_where_it_belongs() {
        const DENY: u32 = 9;
        const RULES: u32 = 7;
        for (free, ruled) in [
            ((0..450).collect::<Vec<u32>>(), vec![]),
            ((0..450).step_by(3).collect(), (1..450).step_by(3).collect()),
            (vec![1, 2], vec![2, 5]),
            (vec![], vec![]),
        ] {
            let mut p = decision_tree(&free, &ruled, DENY, None);
            p.push(insn(BPF_RET_K, 0, 0, RULES));
            for nr in 0..=470 {
                let want = if ruled.contains(&nr) {
                    RULES
                } else if free.contains(&nr) {
                    libc::SECCOMP_RET_ALLOW
                } else {
                    DENY
                };
                assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, [0; 6]), want, "call {nr}");
            }
            assert_eq!(
                run(&p, 0x4000_0003, 1, [0; 6]),
                libc::SECCOMP_RET_KILL_PROCESS
            );
        }
    }

    /// Instructions run for each call number, in total: what the kernel
    /// spends when it installs the filter (it runs the program for every
    /// number to fill its action cache).
    fn walk(p: &[seccompiler::sock_filter]) -> usize {
        (0..=470).map(|nr| steps(p, nr, [0; 6])).sum()
    }

    /// Every call number is decided in a short walk: 15 instructions on
    /// average for the main thread's filter, against 76 with a row of
    /// comparisons and 28 with a tree whose misses went through
    /// seccompiler's program (131 with seccompiler's alone).
    #[test]
    fn every_call_is_decided_in_a_short_walk() {
        for kind in KINDS {
            let p = build(kind, SeccompAction::Trap).unwrap();
            let longest = (0..=470).map(|nr| steps(&p, nr, [0; 6])).max().unwrap();
            assert!(longest <= 50, "{kind:?}: {longest} instructions");
            assert!(walk(&p) <= 18 * 471, "{kind:?}: {} in all", walk(&p));
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
