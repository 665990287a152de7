//! Step 2 of a VM's life: `KVM_CREATE_VM`, guest RAM, and the in-kernel
//! interrupt controllers and timer. Everything here is KVM state; devices
//! live in `devices`, and the order of the whole life in `builder`.

pub mod ahead;
pub mod builder;
pub mod layout;
pub mod restore;
pub mod virtio;

use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MEM_LOG_DIRTY_PAGES, KVM_MSR_EXIT_REASON_FILTER,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::irqchip::IrqchipMode;
use crate::kvm::Hypervisor;
pub use layout::MemoryLayout;

/// Every region carries a dirty-page bitmap that writes through vm-memory
/// (the devices') mark; KVM's dirty log covers the vCPUs' writes. Without
/// dirty page tracking the bitmaps are empty ([`dirty_bitmap`]).
pub type GuestMemory = GuestMemoryMmap<AtomicBitmap>;

/// The page size of the dirty bitmaps (x86-64's).
pub const DIRTY_PAGE: usize = 4096;

/// The dirty-page bitmap of a region of `len` bytes: a bit per page when
/// dirty pages are tracked (only Diff snapshots read it), otherwise empty,
/// so that no device write pays for marks nobody reads (marking was ~7 %
/// of a received frame's time).
pub fn dirty_bitmap(len: usize, track: bool) -> AtomicBitmap {
    const PAGE: NonZeroUsize = NonZeroUsize::new(DIRTY_PAGE).unwrap();
    AtomicBitmap::new(if track { len } else { 0 }, PAGE)
}

/// Guest RAM at `ranges` (address, bytes), with [`dirty_bitmap`]s:
/// anonymous, as vm-memory's `from_ranges` maps it, or `file` (a
/// snapshot's memory file, region after region) mapped copy-on-write.
pub fn guest_ram(
    ranges: &[(GuestAddress, usize)],
    track_dirty: bool,
    file: Option<&File>,
) -> Result<GuestMemory, String> {
    let mut offset = 0u64;
    let regions = ranges
        .iter()
        .map(|&(addr, len)| {
            let mut region =
                MmapRegionBuilder::new_with_bitmap(len, dirty_bitmap(len, track_dirty))
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE);
            if let Some(file) = file {
                let fd = file.try_clone().map_err(|e| e.to_string())?;
                region = region
                    .with_file_offset(FileOffset::new(fd, offset))
                    .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE);
                offset += len as u64;
            }
            let region = region.build().map_err(|e| format!("mmap: {e}"))?;
            GuestRegionMmap::new(region, addr)
                .ok_or_else(|| format!("region at {:#x} wraps around", addr.0))
        })
        .collect::<Result<Vec<_>, String>>()?;
    GuestMemory::from_regions(regions).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}) failed: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddr(kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) failed: {0}")]
    SplitIrqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("MSR filter (KVM_CAP_X86_USER_SPACE_MSR / KVM_X86_SET_MSR_FILTER): {0}")]
    MsrFilter(kvm_ioctls::Error),
}

/// A VM with its memory registered and its irqchip created; no vCPUs yet.
pub struct Vm {
    pub fd: Arc<VmFd>,
    pub memory: GuestMemory,
    pub layout: MemoryLayout,
    /// KVM keeps a dirty log of guest RAM (Diff snapshots).
    pub dirty_log: bool,
    pub irqchip: IrqchipMode,
}

impl Vm {
    /// Fresh, zeroed guest RAM for `layout` (anonymous, untouched), with
    /// dirty bitmaps when `track_dirty` (see [`dirty_bitmap`]).
    pub fn anonymous_memory(
        layout: &MemoryLayout,
        track_dirty: bool,
    ) -> Result<GuestMemory, Error> {
        guest_ram(&layout.ranges(), track_dirty, None).map_err(|reason| Error::Memory {
            mib: layout.total() >> 20,
            reason,
        })
    }

    /// Creates the VM (or takes `made`, one KVM_CREATE_VM already made and
    /// nothing has touched yet: see [`ahead`]), registers `memory` (laid
    /// out as `layout`; with KVM's dirty log when `dirty_log`), and, with
    /// the `kernel` irqchip, creates the in-kernel PIC, IOAPIC, LAPICs and
    /// PIT (with `split`, LAPICs only); KVM wants the irqchip before any
    /// vCPU exists.
    pub fn create(
        hv: &Hypervisor,
        made: Option<VmFd>,
        layout: MemoryLayout,
        memory: GuestMemory,
        dirty_log: bool,
        trap_lstar: bool,
        irqchip: IrqchipMode,
    ) -> Result<Vm, Error> {
        let fd = match made {
            Some(fd) => fd,
            None => hv.kvm.create_vm().map_err(Error::CreateVm)?,
        };
        // First, while the VM's SRCU has never had a grace period: the
        // filter's synchronize_srcu then takes the expedited path (tens of
        // µs) instead of waiting a whole grace period (~15 ms here) as it
        // does once memory slots have been set.
        if trap_lstar {
            trap_lstar_writes(&fd)?;
        }
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("a region's first byte is always mapped");
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: if dirty_log {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [host, host+len) is an mmap owned by
            // `memory`, which lives in the returned `Vm` as long as the VM fd.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(|source| Error::MemorySlot { slot, source })?;
        }
        // Only VT-x uses these pages (real-mode emulation); other hosts
        // accept and ignore them.
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(Error::IdentityMap)?;
        fd.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(Error::TssAddr)?;
        if irqchip == IrqchipMode::Split {
            // The LAPICs in KVM, with the IOAPIC's pins as routable GSIs.
            let cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                args: [crate::irqchip::ioapic::PINS as u64, 0, 0, 0],
                ..Default::default()
            };
            fd.enable_cap(&cap).map_err(Error::SplitIrqchip)?;
        }
        if irqchip.in_kernel() {
            fd.create_irq_chip().map_err(Error::Irqchip)?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(Error::Pit)?;
        }
        Ok(Vm {
            fd: Arc::new(fd),
            memory,
            layout,
            dirty_log,
            irqchip,
        })
    }

    /// Pages the vCPUs wrote since the last call, one bit per page per
    /// region (KVM clears its log as it hands it over).
    pub fn take_dirty_log(&self) -> Result<Vec<Vec<u64>>, kvm_ioctls::Error> {
        self.memory
            .iter()
            .enumerate()
            .map(|(slot, r)| self.fd.get_dirty_log(slot as u32, r.len() as usize))
            .collect()
    }
}

/// Makes guest writes of LSTAR exit to user space (the `syscall`
/// repair arms itself there on emulation-only hosts). Every other MSR
/// access stays in the kernel.
fn trap_lstar_writes(fd: &VmFd) -> Result<(), Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    fd.enable_cap(&cap).map_err(Error::MsrFilter)?;
    let deny = [0u8];
    fd.set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::WRITE,
            base: crate::vcpu::emulation::syscall::MSR_LSTAR,
            msr_count: 1,
            bitmap: &deny,
        }],
    )
    .map_err(Error::MsrFilter)
}
