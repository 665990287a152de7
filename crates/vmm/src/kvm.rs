//! Step 1 of a VM's life: open `/dev/kvm`, check that it speaks the API we
//! were written for, and find out what kind of host we are on.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The only KVM API version that has ever shipped; anything else is not KVM.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities Tsubame cannot run without, with the reason we need each.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "guest RAM"),
    (Cap::Irqchip, "in-kernel PIC/IOAPIC/LAPIC"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::Irqfd, "device interrupts"),
    (Cap::Ioeventfd, "device notifications"),
    (Cap::IrqRouting, "interrupt routing"),
    (Cap::ExtCpuid, "CPUID setup"),
    (Cap::MpState, "AP start-up"),
    (Cap::ImmediateExit, "vCPU kicks"),
    (Cap::SetTssAddr, "real-mode TSS"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} speaks KVM API version {found}, Tsubame needs {KVM_API_VERSION}")]
    ApiVersion { path: PathBuf, found: i32 },
    #[error("KVM lacks capabilities Tsubame needs: {}", .0.join(", "))]
    MissingCaps(Vec<String>),
}

/// What executes guest code on this host. Decides the CPU profile we offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Intel VT-x: guests run natively.
    Vmx,
    /// AMD-V: guests run natively.
    Svm,
    /// `kvm_pvm` without hardware virtualisation: guest kernel code runs in
    /// KVM's instruction emulator, user code natively.
    Pvm,
    /// Something else (a KVM we do not recognise); treated like hardware.
    Unknown,
}

impl HostKind {
    /// True when guest kernel code is emulated and the guest needs a
    /// profile the emulator can run.
    pub fn is_emulated(self) -> bool {
        self == HostKind::Pvm
    }
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            HostKind::Vmx => "Intel VT-x",
            HostKind::Svm => "AMD-V",
            HostKind::Pvm => "emulation-only KVM (kvm_pvm, no VT-x/AMD-V)",
            HostKind::Unknown => "unrecognised KVM host",
        })
    }
}

/// What the host tells us about itself, gathered from sysfs and cpuinfo.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub pvm_module: bool,
    pub intel_module: bool,
    pub amd_module: bool,
    pub cpu_vmx: bool,
    pub cpu_svm: bool,
}

impl HostFacts {
    /// Reads the facts from `root` (normally `/`). `/proc/cpuinfo` is
    /// read only when the modules leave the kind open: it is a text of
    /// every host CPU, the costliest read of a start on a large host.
    pub fn read(root: &Path) -> HostFacts {
        let module = |name: &str| root.join("sys/module").join(name).exists();
        let mut facts = HostFacts {
            pvm_module: module("kvm_pvm"),
            intel_module: module("kvm_intel"),
            amd_module: module("kvm_amd"),
            ..HostFacts::default()
        };
        if !(facts.pvm_module || facts.intel_module || facts.amd_module) {
            let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
            let flags = cpuinfo
                .lines()
                .find(|l| l.starts_with("flags"))
                .unwrap_or("");
            let has_flag = |f: &str| flags.split_whitespace().any(|w| w == f);
            facts.cpu_vmx = has_flag("vmx");
            facts.cpu_svm = has_flag("svm");
        }
        facts
    }

    /// PVM wins only when no hardware virtualisation is present at all.
    /// With a KVM module loaded the modules decide; the CPU flags only
    /// where no module is named (KVM built into the kernel).
    pub fn kind(&self) -> HostKind {
        if self.intel_module || (self.cpu_vmx && !self.pvm_module) {
            HostKind::Vmx
        } else if self.amd_module || (self.cpu_svm && !self.pvm_module) {
            HostKind::Svm
        } else if self.pvm_module {
            HostKind::Pvm
        } else {
            HostKind::Unknown
        }
    }
}

/// An open, checked `/dev/kvm`.
pub struct Hypervisor {
    pub kvm: Kvm,
    pub host: HostKind,
    pub max_vcpus: usize,
}

impl Hypervisor {
    /// Opens `path`, checks the API version and every capability in
    /// [`REQUIRED_CAPS`], and detects the host kind.
    pub fn open(path: &Path) -> Result<Hypervisor, Error> {
        use std::os::unix::ffi::OsStrExt;
        let open_err = |source: std::io::Error| Error::Open {
            path: path.to_owned(),
            source,
        };
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| open_err(std::io::ErrorKind::InvalidInput.into()))?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| open_err(e.into()))?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(Error::ApiVersion {
                path: path.to_owned(),
                found,
            });
        }
        let missing: Vec<String> = REQUIRED_CAPS
            .iter()
            .filter(|(cap, _)| !kvm.check_extension(*cap))
            .map(|(cap, why)| format!("{cap:?} ({why})"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingCaps(missing));
        }
        let host = HostFacts::read(Path::new("/")).kind();
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Hypervisor {
            kvm,
            host,
            max_vcpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(modules: &[&str], flags: &str) -> tempdir::TempRoot {
        let root = tempdir::TempRoot::new();
        for m in modules {
            fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::write(
            root.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse2\n"),
        )
        .unwrap();
        root
    }

    mod tempdir {
        pub struct TempRoot(std::path::PathBuf);
        impl TempRoot {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "tsubame-host-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                TempRoot(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for TempRoot {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn detects_pvm_without_hardware_virtualisation() {
        let root = fake_root(&["kvm", "kvm_pvm"], "");
        assert_eq!(HostFacts::read(root.path()).kind(), HostKind::Pvm);
    }

    #[test]
    fn hardware_wins_over_pvm_module() {
        let root = fake_root(&["kvm", "kvm_pvm", "kvm_intel"], "vmx");
        assert_eq!(HostFacts::read(root.path()).kind(), HostKind::Vmx);
        let root = fake_root(&["kvm", "kvm_amd"], "svm");
        assert_eq!(HostFacts::read(root.path()).kind(), HostKind::Svm);
    }

    #[test]
    fn cpu_flags_decide_only_where_no_module_does() {
        // KVM built in: no kvm_intel/kvm_amd directory, the flags tell.
        let root = fake_root(&["kvm"], "vmx");
        assert_eq!(HostFacts::read(root.path()).kind(), HostKind::Vmx);
        // A module decides: cpuinfo is not read at all.
        let root = fake_root(&["kvm", "kvm_pvm"], "svm");
        let facts = HostFacts::read(root.path());
        assert!(!facts.cpu_svm, "cpuinfo read although kvm_pvm decides");
        assert_eq!(facts.kind(), HostKind::Pvm);
    }

    #[test]
    fn unknown_host_is_not_emulated() {
        let root = fake_root(&["kvm"], "");
        let kind = HostFacts::read(root.path()).kind();
        assert_eq!(kind, HostKind::Unknown);
        assert!(!kind.is_emulated());
    }

    #[test]
    fn missing_device_is_named_in_the_error() {
        let err = match Hypervisor::open(Path::new("/nonexistent/kvm")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened a missing device"),
        };
        assert!(err.contains("/nonexistent/kvm"), "{err}");
    }
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// KVM_INTERRUPT: queues external interrupt `vector` for injection at the
/// next KVM_RUN (only without an in-kernel irqchip, or for the PIC in
/// split mode); kvm-ioctls has no wrapper for it.
pub fn inject_interrupt(
    fd: &kvm_ioctls::VcpuFd,
    vector: u8,
) -> Result<(), vmm_sys_util::errno::Error> {
    use std::os::fd::AsRawFd;
    let irq = kvm_bindings::kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` that lives for the
    // call, from a vCPU fd owned by `fd`.
    let ret =
        unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&fd.as_raw_fd(), KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(vmm_sys_util::errno::Error::last())
    }
}
