//! The jail's cgroup: `<mount>/<parent>/<id>` on cgroup v2 (one directory
//! for every controller), or one such directory per controller's v1
//! hierarchy. Settings are `FILE=VALUE` as the kernel names its files
//! (`memory.max`, `cpu.max`, `memory.limit_in_bytes`, `cpu.cfs_quota_us`);
//! the controller is the part before the first dot.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// One `--cgroup FILE=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub file: String,
    pub value: String,
}

impl std::str::FromStr for Setting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (file, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--cgroup {s:?}: FILE=VALUE"))?;
        let controller = file.split('.').next().unwrap_or("");
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if controller.is_empty() || !file.contains('.') || !file.chars().all(plain) {
            return Err(format!(
                "--cgroup {s:?}: FILE is a cgroup file such as memory.max"
            ));
        }
        Ok(Setting {
            file: file.into(),
            value: value.into(),
        })
    }
}

impl Setting {
    fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or("")
    }
}

/// One directory made for this jail: a handle on its parent (so that it
/// can be removed once the jail has left the host's file tree) and on its
/// `cgroup.procs` (so that the VMM can join it from inside).
struct Made {
    parent: OwnedFd,
    name: String,
    dir: PathBuf,
    procs: fs::File,
}

pub struct Cgroups {
    made: Vec<Made>,
}

fn mounts() -> Result<Vec<(String, PathBuf, String)>, String> {
    let text =
        fs::read_to_string("/proc/self/mounts").map_err(|e| format!("/proc/self/mounts: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[2].to_string(), PathBuf::from(f[1]), f[3].to_string()))
        })
        .collect())
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("cgroup: cannot write {value:?} to {}: {e}", path.display()))
}

/// Makes `base/parent/id`, each level's cpuset copied from its parent (v1
/// cpuset refuses tasks until it has CPUs and memory nodes).
fn make(
    base: &Path,
    parent: &str,
    id: &str,
    cpuset_v1: bool,
) -> Result<(OwnedFd, PathBuf), String> {
    let mut dir = base.to_path_buf();
    for level in [parent, id] {
        let up = dir.clone();
        dir.push(level);
        if !dir.exists() {
            fs::create_dir(&dir).map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
        }
        if cpuset_v1 {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fs::read_to_string(up.join(f)).unwrap_or_default();
                if fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
                {
                    write(&dir.join(f), v.trim())?;
                }
            }
        }
    }
    let parent_dir = fs::File::open(dir.parent().unwrap_or(base))
        .map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
    Ok((parent_dir.into(), dir))
}

fn made(parent: OwnedFd, id: &str, dir: PathBuf) -> Result<Made, String> {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| format!("cgroup {}: {e}", dir.display()))?;
    Ok(Made {
        parent,
        name: id.to_string(),
        dir,
        procs,
    })
}

/// Creates the jail's cgroup(s) and writes the settings; `join` moves a
/// process in.
pub fn setup(version: u8, parent: &str, id: &str, settings: &[Setting]) -> Result<Cgroups, String> {
    let mounts = mounts()?;
    let mut made = Vec::new();
    match version {
        2 => {
            let (_, mnt, _) = mounts
                .iter()
                .find(|(t, _, _)| t == "cgroup2")
                .ok_or("cgroup v2 is not mounted on this host (try --cgroup-version 1)")?;
            let available = fs::read_to_string(mnt.join("cgroup.controllers")).unwrap_or_default();
            let mut wanted: Vec<&str> = settings.iter().map(Setting::controller).collect();
            wanted.sort();
            wanted.dedup();
            for c in &wanted {
                if !available.split_whitespace().any(|a| a == *c) {
                    return Err(format!(
                        "cgroup v2 at {} has no {c:?} controller (this host binds it to cgroup v1: try --cgroup-version 1)",
                        mnt.display()
                    ));
                }
            }
            let (fd, dir) = make(mnt, parent, id, false)?;
            // Controllers reach a cgroup through its ancestors' subtree_control.
            for c in &wanted {
                write(&mnt.join("cgroup.subtree_control"), &format!("+{c}"))?;
                write(
                    &mnt.join(parent).join("cgroup.subtree_control"),
                    &format!("+{c}"),
                )?;
            }
            for s in settings {
                write(&dir.join(&s.file), &s.value)?;
            }
            made.push(self::made(fd, id, dir)?);
        }
        1 => {
            let mut done: Vec<PathBuf> = Vec::new();
            for s in settings {
                let c = s.controller();
                let (_, mnt, _) = mounts
                    .iter()
                    .find(|(t, _, opts)| t == "cgroup" && opts.split(',').any(|o| o == c))
                    .ok_or_else(|| format!("no cgroup v1 hierarchy has the {c:?} controller"))?;
                if !done.contains(mnt) {
                    let (fd, dir) = make(mnt, parent, id, c == "cpuset")?;
                    done.push(mnt.clone());
                    made.push(self::made(fd, id, dir)?);
                }
                let dir = mnt.join(parent).join(id);
                write(&dir.join(&s.file), &s.value)?;
            }
        }
        v => return Err(format!("--cgroup-version {v}: 1 or 2")),
    }
    Ok(Cgroups { made })
}

impl Cgroups {
    pub fn none() -> Cgroups {
        Cgroups { made: Vec::new() }
    }

    /// Moves the calling process into the jail's cgroups ("0": the writer,
    /// whatever its PID namespace calls it).
    pub fn join(&self) -> Result<(), String> {
        for m in &self.made {
            (&m.procs)
                .write_all(b"0")
                .map_err(|e| format!("cgroup {}: cannot join it: {e}", m.dir.display()))?;
        }
        Ok(())
    }

    /// Removes the jail's cgroups once nothing is left in them. Works from
    /// inside the jail: each removal is relative to a directory opened
    /// before.
    pub fn remove(self) {
        for m in self.made {
            let Ok(c) = std::ffi::CString::new(m.name) else {
                continue;
            };
            // SAFETY: unlinkat on a directory fd we own, with a valid C
            // string; it only removes an empty cgroup directory.
            let r = unsafe { libc::unlinkat(m.parent.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            if r != 0 {
                eprintln!(
                    "tsubame jail: cannot remove cgroup {}: {}",
                    m.dir.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_name_what_is_wrong() {
        let s: Setting = "memory.max=256M".parse().unwrap();
        assert_eq!((s.controller(), s.value.as_str()), ("memory", "256M"));
        let s: Setting = "cpu.max=50000 100000".parse().unwrap();
        assert_eq!(s.value, "50000 100000");
        assert!("memory".parse::<Setting>().is_err());
        assert!("max=1".parse::<Setting>().is_err());
        assert!("../x.max=1"
            .parse::<Setting>()
            .unwrap_err()
            .contains("../x.max"));
    }
}
