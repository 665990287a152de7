//! `tsubame jail`: starts the VMM confined as Firecracker's jailer does
//! (its `docs/jailer.md` gives the steps and their order). As root it
//! closes inherited fds, makes `<base>/<exe>/<id>/root` holding only the
//! VMM binary, `/dev/kvm`, `/dev/net/tun` and the handed files, puts
//! itself in a cgroup with the given limits, sets resource limits, joins
//! a network namespace if asked, enters a mount namespace whose root is
//! that directory (and, if asked, a new PID namespace), drops to the given
//! uid and gid, and execs the VMM with an empty environment.

mod cgroup;
mod root;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Args;

#[derive(Args, Debug)]
pub struct JailArgs {
    /// The jail's name: letters, digits and '-', at most 64.
    #[arg(long)]
    pub id: String,
    /// The unprivileged user the VMM runs as.
    #[arg(long)]
    pub uid: u32,
    /// Its group.
    #[arg(long)]
    pub gid: u32,
    /// Jails are made at <DIR>/<binary name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// The VMM binary copied into the jail (default: this one).
    #[arg(long, value_name = "PATH")]
    pub exec_file: Option<PathBuf>,
    /// A file the VMM needs (kernel, initrd, disk), put in the jail's root
    /// under its file name, hard-linked (bind-mounted from another file
    /// system) and given to the jail's user. Repeatable.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Join this network namespace first (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// The cgroup version the settings are for: 1 or 2.
    #[arg(long, default_value_t = 2)]
    pub cgroup_version: u8,
    /// FILE=VALUE written into the jail's cgroup, e.g. memory.max=256M or
    /// cpu.max="50000 100000" (v2), memory.limit_in_bytes=268435456 (v1).
    /// Repeatable.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<cgroup::Setting>,
    /// The jail's cgroup is <parent>/<id>.
    #[arg(long, default_value = "tsubame")]
    pub parent_cgroup: String,
    /// RESOURCE=N: fsize (largest file in bytes) or no-file (open files;
    /// default 2048). Repeatable.
    #[arg(long = "resource-limit", value_name = "RESOURCE=N")]
    pub resource_limits: Vec<String>,
    /// Run the VMM as PID 1 of a new PID namespace; the jailer waits for
    /// it, passes SIGTERM/SIGINT/SIGHUP on, removes the cgroup and exits
    /// with the VMM's status.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// The VMM's own arguments, after `--` (paths as the jail sees them:
    /// a handed file is /<its name>).
    #[arg(last = true, value_name = "VMM ARGS")]
    pub vmm_args: Vec<String>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// setrlimit(2)'s resource: an enum type of its own in glibc, an int in
/// musl.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn limits(specs: &[String]) -> Result<Vec<(Resource, u64)>, String> {
    let mut out = vec![(libc::RLIMIT_NOFILE, 2048)];
    for s in specs {
        let (name, n) = s
            .split_once('=')
            .ok_or_else(|| format!("--resource-limit {s:?}: RESOURCE=N"))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("--resource-limit {s:?}: N is a number"))?;
        let r = match name {
            "fsize" => libc::RLIMIT_FSIZE,
            "no-file" => libc::RLIMIT_NOFILE,
            _ => return Err(format!("--resource-limit {name:?}: fsize or no-file")),
        };
        out.retain(|(x, _)| *x != r);
        out.push((r, n));
    }
    Ok(out)
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Everything but the exec, in Firecracker's order; returns the jail's
/// cgroups (for a waiting parent to remove) and the binary's path inside.
fn prepare(a: &JailArgs) -> Result<(cgroup::Cgroups, PathBuf), String> {
    if !valid_id(&a.id) {
        return Err(format!(
            "--id {:?}: letters, digits and '-', at most 64",
            a.id
        ));
    }
    if a.uid == 0 || a.gid == 0 {
        return Err("--uid and --gid: the VMM must not run as root (0)".into());
    }
    let exe = match &a.exec_file {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| format!("this binary: {e}"))?,
    };
    if !exe.is_file() {
        return Err(format!("--exec-file {}: not a file", exe.display()));
    }
    let exe_name = PathBuf::from(exe.file_name().ok_or("--exec-file has no file name")?);
    let mut handed = Vec::new();
    for f in &a.files {
        let name = f
            .file_name()
            .ok_or_else(|| format!("--file {}: no file name", f.display()))?;
        if !f.is_file() {
            return Err(format!("--file {}: not a file", f.display()));
        }
        handed.push(root::Handed {
            source: f.clone(),
            name: PathBuf::from(name),
        });
    }
    let rlimits = limits(&a.resource_limits)?;
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err("tsubame jail must be started as root".into());
    }
    // 1. Nothing inherited but stdin, stdout and stderr.
    // SAFETY: close_range(2) on fds this process does not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };

    // 2. The jail's directory, filled.
    let root_dir = a.chroot_base_dir.join(&exe_name).join(&a.id).join("root");
    std::fs::create_dir_all(&root_dir).map_err(|e| format!("{}: {e}", root_dir.display()))?;
    let root_dir = root_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root_dir.display()))?;
    let to_bind = root::fill(&root_dir, &exe, &handed, a.uid, a.gid)?;

    // 3. cgroup, 4. resource limits, 5. network namespace.
    let groups = if a.cgroups.is_empty() {
        cgroup::Cgroups::none()
    } else {
        cgroup::setup(a.cgroup_version, &a.parent_cgroup, &a.id, &a.cgroups)?
    };
    for (r, n) in rlimits {
        let l = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit(2) with a valid struct.
        if unsafe { libc::setrlimit(r, &l) } != 0 {
            return Err(os_err("setrlimit"));
        }
    }
    if let Some(ns) = &a.netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("--netns {}: {e}", ns.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on an fd we own.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(os_err(&format!("--netns {}", ns.display())));
        }
    }
    // 6. The mount namespace and the new root; 7. the device nodes.
    root::enter(&root_dir, &handed, &to_bind)?;
    root::devices(a.uid, a.gid)?;
    Ok((groups, Path::new("/").join(exe_name)))
}

/// The last steps, in the process that becomes the VMM.
fn drop_and_exec(a: &JailArgs, exe: &Path, groups: &cgroup::Cgroups) -> String {
    if let Err(e) = groups.join().and_then(|()| root::proc()) {
        return e;
    }
    // SAFETY: setgroups/setgid/setuid with plain values; order matters
    // (the group while still root).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return os_err("setgroups");
        }
        if libc::setgid(a.gid) != 0 {
            return os_err("setgid");
        }
        if libc::setuid(a.uid) != 0 {
            return os_err("setuid");
        }
        // A waiting jailer that dies takes the VMM with it (set after
        // setuid, which clears it; exec of a plain binary keeps it).
        if a.new_pid_ns && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return os_err("prctl(PR_SET_PDEATHSIG)");
        }
    }
    let Ok(prog) = CString::new(exe.as_os_str().as_bytes()) else {
        return "the binary's path has a NUL".into();
    };
    let mut argv: Vec<CString> = vec![prog.clone()];
    for s in &a.vmm_args {
        match CString::new(s.as_str()) {
            Ok(c) => argv.push(c),
            Err(_) => return format!("VMM argument {s:?} has a NUL"),
        }
    }
    let env = kept_environment();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of NUL-terminated strings that live
    // across the call; execve only returns on failure.
    unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    os_err(&format!("exec {}", exe.display()))
}

/// The VMM starts with an empty environment; a test build keeps the
/// fault-injection variable so the tests can reach a jailed VMM.
fn kept_environment() -> Vec<CString> {
    let mut env = Vec::new();
    if cfg!(feature = "test-hooks") {
        if let Ok(v) = std::env::var("TSUBAME_TEST_FAULT") {
            env.extend(CString::new(format!("TSUBAME_TEST_FAULT={v}")));
        }
    }
    env
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The parent's side of `--new-pid-ns`: waits for the VMM, passing stop
/// signals on, then removes the cgroup; returns the VMM's status.
fn wait_for(child: libc::pid_t, groups: cgroup::Cgroups) -> ExitCode {
    CHILD.store(child, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler.
        unsafe { libc::signal(sig, pass_on as *const () as libc::sighandler_t) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!("tsubame jail: {}", os_err("waitpid"));
            return ExitCode::from(1);
        }
    }
    // Only the VMM ever joined it: now empty, it can go.
    groups.remove();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    ExitCode::from(code as u8)
}

pub fn main(a: JailArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("tsubame jail: {e}");
        ExitCode::from(1)
    };
    let (groups, exe) = match prepare(&a) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if a.new_pid_ns {
        // SAFETY: unshare(2): this process's next child starts a new PID
        // namespace, as its PID 1.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return fail(os_err("unshare(CLONE_NEWPID)"));
        }
        // SAFETY: fork(2) in a single-threaded process (the jailer starts
        // no threads); the child only execs or exits.
        match unsafe { libc::fork() } {
            -1 => return fail(os_err("fork")),
            0 => {
                let e = drop_and_exec(&a, &exe, &groups);
                eprintln!("tsubame jail: {e}");
                // SAFETY: _exit(2) in the forked child.
                unsafe { libc::_exit(1) };
            }
            child => return wait_for(child, groups),
        }
    }
    fail(drop_and_exec(&a, &exe, &groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_limits_are_checked() {
        assert!(valid_id("vm-1"));
        assert!(!valid_id("../x") && !valid_id("") && !valid_id(&"a".repeat(65)));
        let l = limits(&["fsize=1024".into()]).unwrap();
        assert!(
            l.contains(&(libc::RLIMIT_FSIZE, 1024)) && l.contains(&(libc::RLIMIT_NOFILE, 2048))
        );
        let l = limits(&["no-file=64".into()]).unwrap();
        assert_eq!(l, vec![(libc::RLIMIT_NOFILE, 64)]);
        assert!(limits(&["cores=1".into()]).unwrap_err().contains("cores"));
        assert!(limits(&["fsize=lots".into()]).is_err());
    }
}
