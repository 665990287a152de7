//! A VM created ahead of the command line. Opening the KVM device and
//! `KVM_CREATE_VM` take ~0.12 ms here, about what parsing the command
//! line takes; `start` runs them on a helper thread while the main thread
//! parses, and the builder `take`s the result when it asked for the same
//! device. Anything else (another device, a failed open, a command that
//! builds no VM) leaves it unused: the builder then opens the device
//! itself, and reports its own errors.
//!
//! The helper only opens and creates: the VM gets its memory, irqchip and
//! filters from the builder, in the order `Vm::create` keeps. It ends
//! before the builder goes on, long before any thread is confined or any
//! guest code runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;

use crate::kvm::Hypervisor;

type Created = Option<(Hypervisor, VmFd)>;

static AHEAD: Mutex<Option<(PathBuf, JoinHandle<Created>)>> = Mutex::new(None);

/// Starts opening `path` and creating a VM on a helper thread. A second
/// call while one is pending does nothing; a thread that cannot be
/// spawned only costs the head start.
pub fn start(path: &Path) {
    let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    if ahead.is_some() {
        return;
    }
    let owned = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("vm ahead".into())
        // Two ioctls and a few small reads: no need for 2 MiB.
        .stack_size(64 << 10)
        .spawn(move || {
            let hv = Hypervisor::open(&owned).ok()?;
            let fd = hv.kvm.create_vm().ok()?;
            Some((hv, fd))
        });
    if let Ok(handle) = spawned {
        *ahead = Some((path.to_owned(), handle));
    }
}

/// The VM created ahead for `path`, waiting for the helper if it is still
/// at work; `None` when none was started, it was for another device, or
/// it failed (the caller opens the device itself and sees why).
pub fn take(path: &Path) -> Created {
    let (made_for, handle) = AHEAD.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let created = handle.join().ok().flatten();
    (made_for == path).then_some(created).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM made ahead is handed out once, and only for its own device.
    /// (One test: `AHEAD` is process-wide.)
    #[test]
    fn taken_once_and_only_for_its_device() {
        let kvm = Path::new("/dev/kvm");
        if !kvm.exists() {
            return;
        }
        start(kvm);
        assert!(
            take(Path::new("/dev/other-kvm")).is_none(),
            "another device"
        );
        assert!(take(kvm).is_none(), "dropped by the mismatched take");
        start(kvm);
        let (hv, fd) = take(kvm).expect("created ahead");
        assert!(hv.max_vcpus >= 1);
        fd.create_vcpu(0).expect("a usable VM");
        assert!(take(kvm).is_none(), "handed out once");
        start(Path::new("/nonexistent/kvm"));
        assert!(
            take(Path::new("/nonexistent/kvm")).is_none(),
            "a failed open"
        );
    }
}
