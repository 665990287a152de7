//! One vCPU's KVM state, saved and restored in the orders KVM's API
//! documentation asks for (on the vCPU's own thread, which owns its fd).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::vcpu::emulation::syscall::RepairState;

/// Bytes in the legacy `struct kvm_xsave` (KVM_GET_XSAVE).
pub const LEGACY_XSAVE_BYTES: usize = std::mem::size_of::<kvm_xsave>();

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_MSRS set {set} of {of} MSRs: MSR {index:#x} was refused")]
    MsrRefused { set: usize, of: usize, index: u32 },
    #[error("the XSAVE area ({saved} bytes) is larger than this host's ({host} bytes)")]
    XsaveSize { saved: usize, host: usize },
    #[error("{0} CPUID entries (at most {KVM_MAX_CPUID_ENTRIES})")]
    Cpuid(usize),
    #[error("{0} MSRs: too many")]
    TooManyMsrs(usize),
}

fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

/// MSRs that are a vCPU's state (the rest of `KVM_GET_MSR_INDEX_LIST` is
/// features, performance counters or read-only).
const STATE_MSRS: &[(u32, u32)] = &[
    (0x10, 0x10),               // TSC
    (0x11, 0x12),               // KVM's first kvmclock MSRs
    (0x1b, 0x1b),               // APIC base
    (0x3a, 0x3b),               // feature control, TSC adjust
    (0x48, 0x48),               // SPEC_CTRL
    (0x174, 0x176),             // SYSENTER CS/ESP/EIP
    (0x1a0, 0x1a0),             // MISC_ENABLE
    (0x200, 0x2ff),             // MTRRs and PAT (0x277)
    (0x6e0, 0x6e0),             // TSC deadline
    (0xc000_0080, 0xc000_0084), // EFER, STAR, LSTAR, CSTAR, SFMASK
    (0xc000_0100, 0xc000_0103), // FS, GS, KERNEL_GS base, TSC_AUX
    (0x4b56_4d00, 0x4b56_4dff), // KVM's paravirtual MSRs
];
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// At most this many MSRs in one snapshot (KVM lists a few hundred).
pub const MAX_MSRS: usize = 1024;

/// State KVM keeps but leaves out of its index list: the MTRRs (8
/// variable pairs, the fixed ranges, the default type), TSC_AUX and
/// SPEC_CTRL (listed only with some CPUs). Those this vCPU cannot read
/// are dropped when it is saved. (EFER, APIC base and FS/GS base travel
/// in SREGS.)
const UNLISTED_STATE_MSRS: &[(u32, u32)] = &[
    (0x48, 0x48),
    (0x200, 0x20f),
    (0x250, 0x250),
    (0x258, 0x259),
    (0x268, 0x26f),
    (0x2ff, 0x2ff),
    (0xc000_0103, 0xc000_0103),
];

/// The state MSRs among `listed` (KVM_GET_MSR_INDEX_LIST) and the unlisted
/// ones, TSC first and TSC_DEADLINE last: restoring the deadline before
/// the TSC would arm it against the wrong clock.
pub fn state_msrs(listed: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = listed
        .iter()
        .copied()
        .filter(|i| STATE_MSRS.iter().any(|(lo, hi)| (lo..=hi).contains(&i)))
        .chain(UNLISTED_STATE_MSRS.iter().flat_map(|&(lo, hi)| lo..=hi))
        .collect();
    v.sort_by_key(|&i| (i != MSR_IA32_TSC, i == MSR_IA32_TSC_DEADLINE, i));
    v.dedup();
    v
}

/// A vCPU as KVM holds it, plus Tsubame's own per-vCPU state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The whole XSAVE area (XSAVE2's size where KVM offers it), as u32s.
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// `None` where KVM cannot say.
    pub tsc_khz: Option<u32>,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    /// The emulation-only host's syscall repair, when it is in use.
    pub repairs: Option<RepairState>,
}

/// Reads `indices`; an MSR this vCPU will not read is left out (KVM lists
/// some that depend on CPUID), so the rest is still saved.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut want: Vec<u32> = indices.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = want
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooManyMsrs(want.len()))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        if n >= want.len() {
            return Ok(msrs.as_slice().to_vec());
        }
        log::debug!("KVM_GET_MSRS: MSR {:#x} not readable, left out", want[n]);
        want.remove(n);
    }
}

fn xsave_words(x: &kvm_xsave) -> Vec<u32> {
    x.region.to_vec()
}

/// Saves the vCPU: MP_STATE first (reading it makes KVM accept pending
/// INIT/SIPI events, which change the LAPIC), VCPU_EVENTS last.
pub fn save(fd: &VcpuFd, id: u8, msrs: &[u32], xsave_bytes: usize) -> Result<VcpuState, Error> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = if xsave_bytes > LEGACY_XSAVE_BYTES {
        let mut x = Xsave::new((xsave_bytes - LEGACY_XSAVE_BYTES).div_ceil(4)).map_err(|_| {
            Error::XsaveSize {
                saved: xsave_bytes,
                host: xsave_bytes,
            }
        })?;
        // SAFETY: `x` holds the XSAVE2 size KVM reported for this VM.
        unsafe { fd.get_xsave2(&mut x) }.map_err(kvm("KVM_GET_XSAVE2"))?;
        let mut words = xsave_words(&x.as_fam_struct_ref().xsave);
        words.extend_from_slice(x.as_slice());
        words
    } else {
        xsave_words(&fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?)
    };
    let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let msrs = read_msrs(fd, msrs)?;
    let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        id,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        tsc_khz,
        cpuid,
        msrs,
        events,
        repairs: None,
    })
}

/// Restores the vCPU: CPUID, MP_STATE, REGS, SREGS, XSAVE, XCRS,
/// DEBUGREGS, LAPIC, MSRs (TSC before TSC_DEADLINE), VCPU_EVENTS, then
/// tells the guest's kvmclock it was stopped.
pub fn restore(fd: &VcpuFd, s: &VcpuState, xsave_bytes: usize) -> Result<(), Error> {
    if s.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(Error::Cpuid(s.cpuid.len()));
    }
    if s.msrs.len() > MAX_MSRS {
        return Err(Error::TooManyMsrs(s.msrs.len()));
    }
    if let Some(khz) = s.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            // Without TSC scaling the guest sees the host's rate: its
            // clocks then drift until it recalibrates. Said, not fatal.
            if let Err(e) = fd.set_tsc_khz(khz) {
                log::warn!(
                    "vCPU {}: cannot set the saved TSC rate {khz} kHz: {e}",
                    s.id
                );
            }
        }
    }
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| Error::Cpuid(s.cpuid.len()))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    set_xsave(fd, &s.xsave, xsave_bytes)?;
    fd.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| Error::TooManyMsrs(s.msrs.len()))?;
    let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set < s.msrs.len() {
        return Err(Error::MsrRefused {
            set,
            of: s.msrs.len(),
            index: s.msrs[set].index,
        });
    }
    let mut events = s.events;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    fd.set_vcpu_events(&events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    match fd.kvmclock_ctrl() {
        // EINVAL: the guest has no kvmclock to tell.
        Err(e) if e.errno() != libc::EINVAL => {
            log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", s.id)
        }
        _ => {}
    }
    Ok(())
}

fn set_xsave(fd: &VcpuFd, words: &[u32], host_bytes: usize) -> Result<(), Error> {
    let host_bytes = host_bytes.max(LEGACY_XSAVE_BYTES);
    if words.len() * 4 > host_bytes {
        return Err(Error::XsaveSize {
            saved: words.len() * 4,
            host: host_bytes,
        });
    }
    let legacy_words = LEGACY_XSAVE_BYTES / 4;
    if host_bytes > LEGACY_XSAVE_BYTES {
        let extra = (host_bytes - LEGACY_XSAVE_BYTES).div_ceil(4);
        let mut x = Xsave::new(extra).map_err(|_| Error::XsaveSize {
            saved: words.len() * 4,
            host: host_bytes,
        })?;
        let (head, tail) = words.split_at(words.len().min(legacy_words));
        // SAFETY: writes within the FAM struct's fixed head (1024 words).
        unsafe { x.as_mut_fam_struct() }.xsave.region[..head.len()].copy_from_slice(head);
        x.as_mut_slice()[..tail.len()].copy_from_slice(tail);
        // SAFETY: `x` holds the XSAVE2 size KVM reported for this VM; a
        // smaller saved area is zero-padded (absent components).
        unsafe { fd.set_xsave2(&x) }.map_err(kvm("KVM_SET_XSAVE2"))
    } else {
        let mut x = kvm_xsave::default();
        x.region[..words.len()].copy_from_slice(words);
        // SAFETY: this host's XSAVE area fits the legacy 4 KiB struct.
        unsafe { fd.set_xsave(&x) }.map_err(kvm("KVM_SET_XSAVE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_msrs_are_filtered_and_ordered() {
        let listed = [
            0xc000_0080,
            0x6e0,
            0x10,
            0x38f, // a performance counter control: not state
            0x4b56_4d01,
            0x10a, // ARCH_CAPABILITIES: a feature, read-only
            0x277,
            0x10,
        ];
        let v = state_msrs(&listed);
        assert_eq!(v.first(), Some(&0x10), "TSC first");
        assert_eq!(v.last(), Some(&0x6e0), "TSC_DEADLINE last");
        for want in [
            0x277,
            0x4b56_4d01,
            0xc000_0080,
            0x200,
            0x20f,
            0x2ff,
            0xc000_0103,
        ] {
            assert!(v.contains(&want), "{want:#x} in {v:x?}");
        }
        for not in [0x38f, 0x10a] {
            assert!(!v.contains(&not), "{not:#x} is not state");
        }
        let mut sorted = v.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len(), "no MSR twice");
    }
}
