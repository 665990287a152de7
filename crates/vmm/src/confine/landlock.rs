//! Landlock: once the machine is set up, what Tsubame's threads may still
//! open. The main thread keeps the paths it was configured with (kernel,
//! initrd, disks read-only or read-write as configured, `/dev/kvm`,
//! `/dev/net/tun`, snapshot, metrics and log files, `--landlock-rule`
//! extras, its own `/proc/self`); every other thread (vCPUs, devices, API,
//! console) has everything it needs open already and may open nothing.
//! TCP bind and connect are refused to all (Tsubame uses none).
//!
//! Landlock restricts the calling thread and the threads it starts later,
//! so each thread restricts itself where it installs its seccomp filter.
//! A kernel without Landlock is reported once and is not fatal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};

use super::ThreadKind;

/// The newest ABI Tsubame has been tested with (Linux 6.15+); older
/// kernels get what they support (best effort), newer ones no more.
const TESTED_ABI: ABI = ABI::V7;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LandlockMode {
    #[default]
    On,
    Off,
}

impl std::str::FromStr for LandlockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(LandlockMode::On),
            "off" => Ok(LandlockMode::Off),
            _ => Err(format!("--landlock {s:?}: on or off")),
        }
    }
}

/// What a granted path may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    ReadWrite,
    /// A directory whose entries may only be removed: where Tsubame's own
    /// sockets live, taken away at exit.
    Remove,
}

/// One `--landlock-rule path=P,access=r|rw`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub grant: Grant,
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut path, mut grant) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("access", "r")) => grant = Some(Grant::Read),
                Some(("access", "rw")) => grant = Some(Grant::ReadWrite),
                Some(("access", a)) => {
                    return Err(format!("--landlock-rule access={a:?}: r or rw"))
                }
                _ => return Err(format!("--landlock-rule {part:?}: path=P,access=r|rw")),
            }
        }
        let path = path.ok_or_else(|| format!("--landlock-rule {s:?}: no path=P"))?;
        if !path.exists() {
            return Err(format!(
                "--landlock-rule path={}: no such file or directory",
                path.display()
            ));
        }
        Ok(Rule {
            path,
            grant: grant.unwrap_or(Grant::Read),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Landlock for the {0:?} thread: {1}")]
    Ruleset(ThreadKind, landlock::RulesetError),
}

static OFF: AtomicBool = AtomicBool::new(false);
static GRANTS: Mutex<Vec<Rule>> = Mutex::new(Vec::new());

pub fn set_mode(mode: LandlockMode) {
    OFF.store(mode == LandlockMode::Off, Ordering::SeqCst);
}

pub fn is_on() -> bool {
    !OFF.load(Ordering::SeqCst)
}

/// Adds `path` to what the main thread may still open once restricted.
/// Called as each path is configured; a path granted twice is kept once.
pub fn grant(path: &Path, grant: Grant) {
    let mut grants = GRANTS.lock().unwrap_or_else(|e| e.into_inner());
    let rule = Rule {
        path: path.to_path_buf(),
        grant,
    };
    if !grants.contains(&rule) {
        grants.push(rule);
    }
}

/// Grants what a machine built from `cfg` was configured with.
pub fn grant_config(cfg: &crate::config::VmConfig) {
    grant(&cfg.kvm_device, Grant::ReadWrite);
    grant(&cfg.kernel, Grant::Read);
    if let Some(initrd) = &cfg.initrd {
        grant(initrd, Grant::Read);
    }
    for d in &cfg.disks {
        let g = if d.read_only {
            Grant::Read
        } else {
            Grant::ReadWrite
        };
        grant(&d.path, g);
    }
    if !cfg.nets.is_empty() {
        grant(Path::new("/dev/net/tun"), Grant::ReadWrite);
    }
    // Its own figures (status, pagemap for Diff snapshots).
    grant(Path::new("/proc/self"), Grant::Read);
}

/// Lets the main thread remove the socket it serves at `path` when it
/// exits (remove only, in that socket's directory).
pub fn grant_socket_removal(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    grant(dir, Grant::Remove);
}

fn access(grant: Grant) -> landlock::BitFlags<AccessFs> {
    match grant {
        Grant::Read => AccessFs::from_read(TESTED_ABI),
        Grant::ReadWrite => AccessFs::from_all(TESTED_ABI),
        Grant::Remove => AccessFs::RemoveFile.into(),
    }
}

/// Restricts the calling thread: the main thread to its grants, any other
/// kind to nothing at all.
pub fn restrict(kind: ThreadKind) -> Result<(), Error> {
    if !is_on() {
        return Ok(());
    }
    let fail = |e| Error::Ruleset(kind, e);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TESTED_ABI))
        .map_err(fail)?
        .handle_access(AccessNet::from_all(TESTED_ABI))
        .map_err(fail)?
        .create()
        .map_err(fail)?;
    if kind == ThreadKind::Vmm {
        let grants = GRANTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for rule in grants {
            // A configured path that is gone cannot be reopened anyway.
            let Ok(fd) = PathFd::new(&rule.path) else {
                log::debug!("Landlock: {} is gone; not granted", rule.path.display());
                continue;
            };
            // A rule on a file may only name file rights.
            let mut rights = access(rule.grant);
            if !rule.path.is_dir() {
                rights &= AccessFs::from_file(TESTED_ABI);
            }
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, rights))
                .map_err(fail)?;
        }
    }
    let status = ruleset.restrict_self().map_err(fail)?;
    if kind == ThreadKind::Vmm {
        report(status.ruleset);
    }
    Ok(())
}

fn report(status: RulesetStatus) {
    match status {
        RulesetStatus::FullyEnforced => log::info!("Landlock: on (file system and TCP)"),
        RulesetStatus::PartiallyEnforced => {
            log::info!("Landlock: on, in part (this kernel's Landlock is older than ABI 7)")
        }
        RulesetStatus::NotEnforced => {
            log::warn!("Landlock: this kernel does not support it; running without it")
        }
    }
}

/// The hint for an error on a path the main thread was not granted.
pub fn hint(e: &std::io::Error) -> &'static str {
    if is_on() && e.kind() == std::io::ErrorKind::PermissionDenied {
        " (Landlock: Tsubame may only open what it was configured with; \
         add --landlock-rule path=DIR,access=rw or use --landlock off)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_name_what_is_wrong() {
        let r: Rule = "path=/tmp,access=rw".parse().unwrap();
        assert_eq!(r.grant, Grant::ReadWrite);
        let r: Rule = "path=/tmp".parse().unwrap();
        assert_eq!(r.grant, Grant::Read);
        let e = "path=/tmp,access=x".parse::<Rule>().unwrap_err();
        assert!(e.contains("access=\"x\""), "{e}");
        let e = "path=/no/such/dir".parse::<Rule>().unwrap_err();
        assert!(e.contains("/no/such/dir"), "{e}");
        assert!("access=r".parse::<Rule>().is_err());
        assert!("path=/tmp,size=1".parse::<Rule>().is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("off".parse(), Ok(LandlockMode::Off));
        assert!("yes".parse::<LandlockMode>().is_err());
    }
}
