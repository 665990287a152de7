//! A VM created ahead of the command line. Opening the KVM device and
//! `KVM_CREATE_VM` take ~0.12 ms here, about what parsing the command
//! line takes; `start` runs them on a helper thread while the main thread
//! parses, and the builder `take`s the result when it asked for the same
//! device. Anything else (another device, a failed open, a command that
//! builds no VM) leaves it unused: the builder then opens the device
//! itself, and reports its own errors.
//!
//! The helper hands the opened device over first and then creates the
//! VM, so the builder can ask KVM for its CPUID while the VM is still
//! being made. It only opens and creates: the VM gets its memory, irqchip
//! and filters from the builder, in the order `Vm::create` keeps. It ends
//! before the builder goes on, long before any thread is confined or any
//! guest code runs.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;

use crate::kvm::Hypervisor;

struct Pending {
    device: PathBuf,
    opened: Receiver<Arc<Hypervisor>>,
    created: JoinHandle<Option<VmFd>>,
}

static AHEAD: Mutex<Option<Pending>> = Mutex::new(None);

/// The device opened ahead, and the VM the helper is making on it. The
/// helper is joined when the VM is taken, or when this is dropped (a
/// build that failed first): it never outlives the build.
pub struct Early {
    pub hv: Arc<Hypervisor>,
    created: Option<JoinHandle<Option<VmFd>>>,
}

impl Early {
    /// The VM, once the helper has made it; `None` if KVM refused (the
    /// builder then asks again and reports why).
    pub fn vm(mut self) -> Option<VmFd> {
        self.created.take()?.join().ok().flatten()
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(helper) = self.created.take() {
            let _ = helper.join();
        }
    }
}

/// Starts opening `path` and creating a VM on a helper thread. A second
/// call while one is pending does nothing; a thread that cannot be
/// spawned only costs the head start.
pub fn start(path: &Path) {
    let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    if ahead.is_some() {
        return;
    }
    let owned = path.to_owned();
    let (tx, opened) = sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("vm ahead".into())
        // Two ioctls and a few small reads: no need for 2 MiB.
        .stack_size(64 << 10)
        .spawn(move || {
            let hv = Arc::new(Hypervisor::open(&owned).ok()?);
            let _ = tx.send(hv.clone());
            hv.kvm.create_vm().ok()
        });
    if let Ok(created) = spawned {
        *ahead = Some(Pending {
            device: path.to_owned(),
            opened,
            created,
        });
    }
}

/// The device opened ahead for `path`, waiting for the helper to open it
/// if need be; `None` when none was started, it was for another device,
/// or the open failed (the caller opens the device itself and sees why).
pub fn take(path: &Path) -> Option<Early> {
    let pending = AHEAD.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let Ok(hv) = pending.opened.recv() else {
        let _ = pending.created.join();
        return None;
    };
    let early = Early {
        hv,
        created: Some(pending.created),
    };
    if pending.device != path {
        // Not ours: dropped, the helper joined and its VM closed.
        return None;
    }
    Some(early)
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
        let early = take(kvm).expect("opened ahead");
        assert!(early.hv.max_vcpus >= 1);
        early.hv.kvm.get_api_version();
        let fd = early.vm().expect("created ahead");
        fd.create_vcpu(0).expect("a usable VM");
        assert!(take(kvm).is_none(), "handed out once");
        // Dropped without its VM taken (a build that failed first), the
        // helper is joined: no thread of it is left.
        start(kvm);
        drop(take(kvm).expect("opened ahead"));
        let helpers = std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "vm ahead")
            .count();
        assert_eq!(helpers, 0, "a helper outlived its Early");
        start(Path::new("/nonexistent/kvm"));
        assert!(
            take(Path::new("/nonexistent/kvm")).is_none(),
            "a failed open"
        );
    }
}
