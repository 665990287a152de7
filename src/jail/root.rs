//! The jail's file tree: a directory that holds only the VMM binary, the
//! device nodes it needs and the files it was handed, made the root of a
//! mount namespace of its own with `pivot_root` (a `chroot` can be left by
//! a process that keeps a directory fd; a pivoted root cannot).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn c(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL in the path", p.display()))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let text =
        |t: &str| CString::new(t).map_err(|_| format!("mount {}: a NUL in {t:?}", dst.display()));
    let src_c = src.map(c).transpose()?;
    let dst_c = c(dst)?;
    let fs_c = fstype.map(text).transpose()?;
    let data_c = data.map(text).transpose()?;
    let ptr = |o: &Option<CString>| o.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call; mount(2) does not keep them.
    let r = unsafe {
        libc::mount(
            ptr(&src_c),
            dst_c.as_ptr(),
            ptr(&fs_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(os_err(&format!("mount {}", dst.display())))
    }
}

/// A file handed to the jail, and where it appears inside.
pub struct Handed {
    pub source: PathBuf,
    pub name: PathBuf,
}

/// The shared libraries a dynamically linked binary loads (its ELF
/// interpreter among them), as `ldd` resolves them on this host; none for
/// a static binary. They go into the jail at the same paths.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| format!("ldd {} (to find its libraries): {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing.
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Fills `root` (already a directory) before the mount namespace exists:
/// the binary as `/<exe name>` and each handed file under its name, hard
/// linked (the same inode, so a disk's writes land in the original) and
/// owned by the jail's user. Returns the files that could not be linked
/// (another file system): they are bind-mounted once the namespace exists.
pub fn fill(
    root: &Path,
    exe: &Path,
    files: &[Handed],
    uid: u32,
    gid: u32,
) -> Result<Vec<usize>, String> {
    let name = exe.file_name().ok_or("the VMM binary has no file name")?;
    let inside = root.join(name);
    let _ = fs::remove_file(&inside);
    fs::copy(exe, &inside).map_err(|e| format!("copying {} into the jail: {e}", exe.display()))?;
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    for lib in shared_libraries(exe)? {
        let dst = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::copy(&lib, &dst)
            .map_err(|e| format!("copying {} into the jail: {e}", lib.display()))?;
    }
    let mut to_bind = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let dst = root.join(&f.name);
        let _ = fs::remove_file(&dst);
        match fs::hard_link(&f.source, &dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                fs::write(&dst, b"").map_err(|e| format!("{}: {e}", dst.display()))?;
                to_bind.push(i);
            }
            Err(e) => return Err(format!("linking {} into the jail: {e}", f.source.display())),
        }
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    // The VMM creates its API and vsock sockets in its own root.
    std::os::unix::fs::chown(root, Some(uid), Some(gid))
        .map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(to_bind)
}

/// Enters a mount namespace of its own whose root is `root`: the host's
/// mounts stay out of it, only `root`, the handed files that had to be
/// bind-mounted and a read-only `/sys/module` (how Tsubame tells an
/// emulation-only host) are visible.
pub fn enter(root: &Path, files: &[Handed], to_bind: &[usize]) -> Result<(), String> {
    // SAFETY: unshare(2) with a flag; affects only this process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    // Nothing mounted here travels back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )?;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)?;
    for &i in to_bind {
        let f = &files[i];
        mount(
            Some(&f.source),
            &root.join(&f.name),
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    let sys_module = root.join("sys/module");
    fs::create_dir_all(&sys_module).map_err(|e| format!("{}: {e}", sys_module.display()))?;
    mount(
        Some(Path::new("/sys/module")),
        &sys_module,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    mount(
        None,
        &sys_module,
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )?;
    std::env::set_current_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let old = Path::new("old_root");
    let _ = fs::create_dir(old);
    let (dot, old_c) = (c(Path::new("."))?, c(old)?);
    // SAFETY: pivot_root(2) on two NUL-terminated paths that live across
    // the call.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old_c.as_ptr()) } != 0 {
        return Err(os_err("pivot_root"));
    }
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;
    let old_abs = c(Path::new("/old_root"))?;
    // SAFETY: umount2(2) on a NUL-terminated path; MNT_DETACH.
    if unsafe { libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(os_err("umount /old_root"));
    }
    fs::remove_dir("/old_root").map_err(|e| format!("/old_root: {e}"))?;
    Ok(())
}

/// `/dev/kvm` and `/dev/net/tun` as character devices the jail's user
/// owns, and nothing else under `/dev`.
pub fn devices(uid: u32, gid: u32) -> Result<(), String> {
    fs::create_dir_all("/dev/net").map_err(|e| format!("/dev/net: {e}"))?;
    for (path, major, minor) in [("/dev/kvm", 10, 232), ("/dev/net/tun", 10, 200)] {
        let _ = fs::remove_file(path);
        let p = c(Path::new(path))?;
        // SAFETY: mknod(2) on a NUL-terminated path, a character device
        // readable and writable by its owner only.
        let r = unsafe {
            libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
                libc::makedev(major, minor),
            )
        };
        if r != 0 {
            return Err(os_err(&format!("mknod {path}")));
        }
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// A `/proc` of this PID namespace in which the jail's user sees only its
/// own processes (Tsubame reads its own status and the host's CPU flags).
pub fn proc() -> Result<(), String> {
    fs::create_dir_all("/proc").map_err(|e| format!("/proc: {e}"))?;
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("hidepid=invisible"),
    )
}
