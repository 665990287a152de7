//! A machine's birth, step by step, in qemu-kvm's order: check the inputs,
//! open KVM, create the VM and its memory and irqchip, start the vCPU
//! threads (which create their vCPUs and wait), attach devices, load the
//! kernel, and finally open the start gate.
//!
//! - [`platform`]: the devices every machine has, and interrupt lines.
//! - [`pending`]: the vCPU threads until the machine starts.

mod pending;
mod platform;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

use super::{layout::MemoryLayout, Vm};
use crate::boot::acpi::AcpiConfig;
use crate::boot::cpuid::CpuProfile;
use crate::boot::{self, BootConfig, BootSetup};
use crate::config::{self, ProfileChoice, VmConfig};
use crate::devices::legacy::{SerialConsole, I8042};
use crate::devices::manager::OwnChips;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::{bus, DeviceManager};
use crate::irqchip::UserChip;
use crate::kvm::{self, HostKind, Hypervisor};
use crate::lifecycle::Lifecycle;
use crate::machine::Machine;
use crate::persist::{self, MachineShape};
use crate::vcpu::{self, CpuPlan, Gate, Gates, MachineReady, Start, StartGate};
use pending::PendingVcpus;
use platform::{attach_devices, register_irq, Devices};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--cpus {0}: at least 1 vCPU is needed")]
    NoCpus(usize),
    #[error("--cpus {asked}: at most {max} vCPUs are supported{why}")]
    TooManyCpus {
        asked: usize,
        max: usize,
        why: &'static str,
    },
    #[error("--memory: {0}")]
    Memory(#[from] super::layout::Error),
    #[error("--memory {asked} MiB is more than the host has ({host} MiB)")]
    HostMemory { asked: u64, host: u64 },
    #[error("kernel {path}: {source}")]
    KernelFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path}: {source}")]
    InitrdFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serial output {path}: {source}")]
    SerialFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    #[error(transparent)]
    Vm(#[from] super::Error),
    #[error("vCPU {id}: {source}")]
    Vcpu { id: u8, source: vcpu::Error },
    #[error("cannot start vCPU threads: {0}")]
    Thread(std::io::Error),
    #[error("cannot make the PIT's timerfd: {0}")]
    PitTimer(std::io::Error),
    #[error("device setup: {0}")]
    Device(#[from] bus::Error),
    #[error("device setup: {0}")]
    DeviceIo(#[from] std::io::Error),
    #[error("irqfd for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("--irqchip userspace: the PIC has 16 inputs, a device needs GSI {gsi} (fewer virtio devices)")]
    PicInputs { gsi: u32 },
    #[error("--irqchip userspace --cpus {0}: Tsubame's PIC reaches vCPU 0 only (there is no user-space LAPIC); use one vCPU, or --irqchip split or kernel")]
    UserspaceSmp(usize),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("KVM_GET_MSR_INDEX_LIST: {0}")]
    MsrList(kvm_ioctls::Error),
    #[error(transparent)]
    Virtio(#[from] super::virtio::Error),
}

/// Checks what can be checked without KVM: sizes and files.
fn check_inputs(cfg: &VmConfig) -> Result<(MemoryLayout, std::fs::File), Error> {
    if cfg.cpus == 0 {
        return Err(Error::NoCpus(cfg.cpus));
    }
    if !cfg.irqchip.lapic_in_kernel() && cfg.cpus > 1 {
        return Err(Error::UserspaceSmp(cfg.cpus));
    }
    if cfg.cpus > config::MAX_VCPUS {
        return Err(Error::TooManyCpus {
            asked: cfg.cpus,
            max: config::MAX_VCPUS,
            why: " (8-bit APIC IDs)",
        });
    }
    let layout = MemoryLayout::new(cfg.memory_mib)?;
    if let Some(host) = config::host_memory_mib() {
        if cfg.memory_mib > host {
            return Err(Error::HostMemory {
                asked: cfg.memory_mib,
                host,
            });
        }
    }
    // Opened, not read: the loader reads it in place.
    let kernel_err = |source| Error::KernelFile {
        path: cfg.kernel.clone(),
        source,
    };
    let image = std::fs::File::open(&cfg.kernel).map_err(kernel_err)?;
    if !image.metadata().map_err(kernel_err)?.is_file() {
        return Err(kernel_err(std::io::Error::other("not a regular file")));
    }
    if let Some(initrd) = &cfg.initrd {
        let meta = std::fs::metadata(initrd).map_err(|source| Error::InitrdFile {
            path: initrd.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::InitrdFile {
                path: initrd.clone(),
                source: std::io::Error::other("not a regular file"),
            });
        }
    }
    Ok((layout, image))
}

/// Kernel parameters for emulation-only hosts, each for a measured reason:
/// - `noxsave`, `clearcpuid=smap`: XSAVE and SMAP cannot be hidden from
///   CPUID there, and the emulator runs neither xsave/xrstor nor stac/clac
///   (6.1 has no `nosmap`; `clearcpuid` takes feature names since 5.19).
/// - `clearcpuid=ssse3`: otherwise random.c's blake2s runs SSSE3 code at
///   CPL0, which the emulator cannot.
/// - `clearcpuid=erms,fsrm`: with them the kernel zeroes and copies with
///   `rep stosb`/`movsb` (pages, user copies), and the emulator steps a
///   rep string instruction one element at a time, at much the same cost
///   whatever the element's size (`tsubame bench repstring`: a 4 KiB page
///   cleared in 1688 us a byte at a time, 241 us a quadword at a time,
///   copied in 2712 against 424 us). Without them the kernel takes the
///   REP_GOOD `stosq`/`movsq` paths. In Debian 6.1 boots, 40 `busybox
///   true` starts took 48.3, 50.6 and 48.0 s with them, 41.1, 43.5 and
///   57.3 s without: this host's drift (the last run without was slow in
///   everything, its boot included) is larger than the ~0.2 s a start
///   should save. A kernel parameter changes only the kernel's choice:
///   user code's CPUID still shows both.
/// - `spectre_v2=off spec_rstack_overflow=off retbleed=off`: the retpoline
///   and return thunks were 8-12% of sampled boot time, and they guard
///   against speculation of kernel code, which here is emulated, not run.
///   (Meltdown/MDS mitigations stay: user code does run natively.)
/// - `cryptomgr.notests`: the crypto self-tests (RSA above all) were minutes
///   of emulated time.
/// - `nosoftlockup`: a slow boot trips the soft-lockup detector, whose
///   backtraces (kallsyms lookups) cost more emulated time.
/// - `initcall_blacklist=init_kprobe_trace`: the initcall that makes
///   tracefs's `kprobe_events` and `kprobe_profile` took 120 s under
///   `initcall_debug` (beside a build); Debian 6.1 on 2 vCPUs reached user
///   space and reset in 300 and 305 s without it, 324-350 s (4 runs) with
///   it. Only those two files (and `kprobe_event=` events) are lost;
///   `initcall_blacklist=` on `--cmdline` keeps them.
/// - `blake2s_mod_init`, `crypto_kdf108_init` on the same list: self-tests
///   of BLAKE2s and of the SP800-108 KDF, nothing else (`cryptomgr.notests`
///   does not reach them), 5.1 s and 0.75 s of a boot under `initcall_debug`
///   (after the clock switch, so timed right). The x86 BLAKE2s glue's
///   initcall has the same name; it only turns on SSSE3 and AVX-512 code,
///   which `clearcpuid=ssse3` and `noxsave` already keep off.
///
/// Left in, though large: the kernel parsing its own BTF (50-73 s), which
/// the first kfunc registration starts (TCP cubic's; blacklisted, the next
/// registrant's took it), and tracing's enum-map update, which blocks the
/// next tracer registration (`init_blk_tracer`: 18-34 s).
pub const EMULATION_PARAMS: &[&str] = &[
    "noxsave",
    "clearcpuid=smap,ssse3,erms,fsrm",
    "spectre_v2=off",
    "spec_rstack_overflow=off",
    "retbleed=off",
    "cryptomgr.notests",
    "nosoftlockup",
    "initcall_blacklist=init_kprobe_trace,blake2s_mod_init,crypto_kdf108_init",
];

/// Kernel parameters for every host, part of describing this machine:
/// - `reboot=acpi`: on hardware-reduced ACPI, Linux otherwise picks an EFI
///   reboot (there is no EFI here) and then a real-mode jump into a BIOS
///   that does not exist; the FADT's reset register is what this machine
///   has. (The reset vector ends the machine too, as a fallback.)
pub const MACHINE_PARAMS: &[&str] = &["reboot=acpi"];

/// With Tsubame's PIC alone (`--irqchip userspace`):
/// - `nolapic`: the CPUID APIC bit is clear and no table names an APIC;
///   this says so once more to kernels that would probe for one anyway.
/// - `acpi=off`: this machine's ACPI is hardware-reduced, and Linux takes
///   that to mean there is no PIC and no PIT (its timer would never tick).
///   Without ACPI it finds the virtio devices on the command line, and
///   `reboot` goes through the i8042; `poweroff` only halts.
pub const NO_APIC_PARAMS: &[&str] = &["nolapic", "acpi=off"];

/// The profile the guest gets, and the kernel parameters it implies.
fn choose_profile(cfg: &VmConfig, host: HostKind) -> (CpuProfile, Vec<&'static str>) {
    let emulated = match cfg.profile {
        ProfileChoice::Auto => host.is_emulated(),
        ProfileChoice::Native => false,
        ProfileChoice::Emulated => true,
    };
    let profile = CpuProfile {
        emulated,
        apic: cfg.irqchip.lapic_in_kernel(),
    };
    let mut params = MACHINE_PARAMS.to_vec();
    if !profile.apic {
        params.extend_from_slice(NO_APIC_PARAMS);
    }
    if emulated {
        params.extend_from_slice(EMULATION_PARAMS);
    }
    (profile, params)
}

/// What `build` did, for the log and for callers that want to check it.
#[derive(Debug)]
pub struct BuildSummary {
    pub host: HostKind,
    pub cmdline: String,
    /// `None` for a restored machine.
    pub boot: Option<BootSetup>,
}

/// The machine before any guest code is in it: KVM opened, the VM with
/// its memory and irqchip, vCPU threads waiting at the gate, devices
/// attached and their thread running. [`boot`] puts a kernel in it; a
/// restore will put saved state in it instead.
pub struct CreatedMachine {
    pub(super) host: HostKind,
    pub(super) vm: Vm,
    layout: MemoryLayout,
    lifecycle: Arc<Lifecycle>,
    gate: Arc<StartGate>,
    pending: PendingVcpus,
    vcpu_responses: mpsc::Receiver<(u8, vcpu::VcpuResponse)>,
    devices: Devices,
    device_thread: Option<crate::devices::virtio::worker::DeviceThread>,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    chips: OwnChips,
    profile: CpuProfile,
    complete_gaps: bool,
    sync_regs: bool,
    /// What a snapshot saves of each vCPU.
    state_msrs: Vec<u32>,
    xsave_bytes: usize,
    shape: MachineShape,
    cmdline: String,
    cpus: u8,
    report_stats: bool,
}

/// Brings a machine to the point where its vCPUs may run: create it, then
/// boot the configured kernel into it.
pub fn build(cfg: &VmConfig) -> Result<Machine, Error> {
    // Inputs first: a bad file or size fails fast, before any KVM state.
    let (layout, kernel_image) = check_inputs(cfg)?;
    crate::trace::mark("inputs checked");
    let memory = Vm::anonymous_memory(&layout, cfg.track_dirty_pages)?;
    crate::trace::mark("guest memory mapped");
    let created = create(cfg, layout, memory, Purpose::Boot)?;
    boot(created, cfg, &kernel_image)
}

/// What a created machine is for: a boot configures its vCPUs from KVM's
/// CPUID while the rest is set up; a restore takes theirs from a snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Purpose {
    Boot,
    Restore,
}

/// Steps 1-4 of a machine's birth: everything but the guest's contents
/// (`memory`: fresh RAM, or a snapshot's memory file).
pub fn create(
    cfg: &VmConfig,
    layout: MemoryLayout,
    memory: crate::vm::GuestMemory,
    purpose: Purpose,
) -> Result<CreatedMachine, Error> {
    let virtio_plan = super::virtio::plan(cfg)?;
    crate::confine::landlock::grant_config(cfg);

    // 1. KVM: opened here, or ahead while the command line was parsed.
    let early = super::ahead::take(&cfg.kvm_device);
    let hv = match &early {
        Some(e) => e.hv.clone(),
        None => Arc::new(Hypervisor::open(&cfg.kvm_device)?),
    };
    crate::trace::mark("kvm opened");
    log::info!("host: {}", hv.host);
    let max = hv.max_vcpus.min(config::MAX_VCPUS);
    if cfg.cpus > max {
        return Err(Error::TooManyCpus {
            asked: cfg.cpus,
            max,
            why: " (KVM_CAP_MAX_VCPUS)",
        });
    }
    let (profile, extra_params) = choose_profile(cfg, hv.host);
    if profile.emulated {
        log::info!(
            "guest kernel code will be emulated: CPU profile hides CX16 and KVM's PV TLB flush, kernel gets: {}",
            extra_params.join(" ")
        );
    }
    let virtio_params = super::virtio::cmdline_params(&virtio_plan);
    let params: Vec<&str> = extra_params
        .iter()
        .copied()
        .chain(virtio_params.iter().map(String::as_str))
        .collect();
    let cmdline = cfg.guest_cmdline(&params);
    let cpus = cfg.cpus as u8;

    // While a helper still makes the VM, this thread asks for KVM's CPUID
    // instead of waiting (0.06 ms on one host, 0.7 ms on a nested one,
    // where each of its ~76 CPUID instructions traps); otherwise it asks
    // once the vCPU threads have started (below), where their own start
    // hides it.
    let supported_cpuid = |hv: &Hypervisor| {
        hv.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::Cpuid)
    };
    let early_cpuid = (early.is_some() && purpose == Purpose::Boot)
        .then(|| supported_cpuid(&hv))
        .transpose()?;

    // 2. The VM: memory, irqchip, PIT.
    let complete_gaps = profile.emulated && cfg.complete_gaps;
    let made = early.and_then(super::ahead::Early::vm);
    if made.is_some() {
        log::debug!("VM created ahead, while the command line was parsed");
    }
    let vm = Vm::create(
        &hv,
        made,
        layout.clone(),
        memory,
        cfg.track_dirty_pages,
        complete_gaps,
        cfg.irqchip,
    )?;
    if cfg.irqchip.in_kernel() {
        log::info!("irqchip: kernel (KVM's PIC, IOAPIC, LAPICs and PIT)");
    } else if cfg.irqchip.lapic_in_kernel() {
        log::info!("irqchip: split (KVM's LAPICs; Tsubame's IOAPIC, 8259A pair and 8254)");
    } else {
        log::info!(
            "irqchip: {} (Tsubame's 8259A pair and 8254 on vCPU 0; CPUID APIC bit cleared, no MADT or MP table, kernel gets {})",
            cfg.irqchip.name(),
            NO_APIC_PARAMS.join(" ")
        );
    }
    log::debug!("guest memory: {:?}", layout.ram);
    crate::trace::mark("vm created");

    // 3. vCPU threads: each creates its vCPU, then waits at the gate.
    vcpu::install_kick_handler().map_err(|e| Error::Thread(e.into()))?;
    let lifecycle = Arc::new(Lifecycle::new()?);
    let gate = Arc::new(StartGate::new(usize::from(cpus)));
    let plan = (purpose == Purpose::Boot).then(|| Arc::new(Gate::<CpuPlan>::default()));
    let (created_tx, created_rx) = mpsc::channel();
    let (responses_tx, vcpu_responses) = mpsc::channel();
    let mut pending = PendingVcpus {
        gate: gate.clone(),
        plan: plan.clone(),
        threads: Vec::new(),
        created: created_rx,
        all_created: false,
    };
    let wakeups: Vec<Arc<vcpu::handle::Wakeup>> = (0..cpus).map(|_| Arc::default()).collect();
    for (id, wakeup) in (0..cpus).zip(&wakeups) {
        let t = vcpu::spawn(
            id,
            wakeup.clone(),
            vm.fd.clone(),
            Gates {
                plan: plan.clone(),
                start: gate.clone(),
            },
            created_tx.clone(),
            responses_tx.clone(),
        )
        .map_err(Error::Thread)?;
        pending.threads.push(t);
    }
    drop(created_tx);
    crate::trace::mark("vcpu threads started");
    // The vCPUs create and configure themselves from here on, while this
    // thread attaches the devices and loads the kernel.
    if let Some(plan) = &plan {
        let supported_cpuid = match early_cpuid {
            Some(cpuid) => cpuid,
            None => supported_cpuid(&hv)?,
        };
        plan.open(Arc::new(CpuPlan {
            supported_cpuid,
            cpu_profile: profile,
            vcpu_count: cpus,
        }));
        crate::trace::mark("cpu plan ready");
    }

    // 4. Devices, and Tsubame's PIC and PIT when KVM has none; lines go to
    // the PIC only in `userspace` (in `split` they are irqfds routed by
    // the IOAPIC).
    let chip = (!cfg.irqchip.in_kernel()).then(|| UserChip::new(wakeups[0].clone()));
    let pic_lines = chip.as_ref().filter(|_| !cfg.irqchip.lapic_in_kernel());
    let mut devices = attach_devices(&vm, pic_lines, &lifecycle, &cfg.serial)?;
    let ioapic = match (&chip, cfg.irqchip) {
        (Some(c), crate::irqchip::IrqchipMode::Split) => {
            let io = crate::irqchip::ioapic::IoApic::new(
                vm.fd.clone(),
                crate::boot::acpi::ioapic_id(cpus),
            );
            devices.mmio.insert(
                "ioapic",
                super::layout::IOAPIC_ADDR,
                0x1000,
                Arc::new(Mutex::new(crate::irqchip::ioapic::IoApicMmio(io.clone()))),
            )?;
            c.attach_ioapic(io.clone());
            Some(io)
        }
        _ => None,
    };
    if let Some(c) = &chip {
        crate::irqchip::ports::attach(c, &mut devices.pio)?;
        c.start_timer().map_err(Error::PitTimer)?;
    }
    devices
        .acpi
        .extend(super::virtio::acpi_descriptions(&virtio_plan));
    let transports = super::virtio::attach(
        &vm.fd,
        &vm.memory,
        &mut devices.mmio,
        virtio_plan,
        cfg.ioeventfd,
        |gsi| register_irq(&vm, pic_lines, gsi),
    )?;
    let device_thread =
        crate::devices::virtio::worker::DeviceThread::spawn(&transports, lifecycle.clone())
            .map_err(Error::Thread)?;
    crate::trace::mark("devices attached");
    let state_msrs = hv
        .kvm
        .get_msr_index_list()
        .map(|l| persist::vcpu::state_msrs(l.as_slice()))
        .map_err(Error::MsrList)?;
    let xsave_bytes = vm.fd.check_extension_int(kvm_ioctls::Cap::Xsave2).max(0) as usize;
    // Only the emulation-only repairs use it: asked only there.
    let both = kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS;
    let sync_regs =
        complete_gaps && vm.fd.check_extension_int(kvm_ioctls::Cap::SyncRegs) as u32 & both == both;
    log::debug!(
        "a snapshot saves up to {} MSRs per vCPU and an XSAVE area of {} bytes",
        state_msrs.len(),
        xsave_bytes.max(persist::vcpu::LEGACY_XSAVE_BYTES)
    );
    crate::trace::mark("msr list read");
    Ok(CreatedMachine {
        host: hv.host,
        vm,
        layout,
        lifecycle,
        gate,
        pending,
        vcpu_responses,
        devices,
        device_thread,
        virtio: transports,
        chips: OwnChips { chip, ioapic },
        profile,
        complete_gaps,
        sync_regs,
        state_msrs,
        xsave_bytes,
        shape: MachineShape::of(cfg, profile.emulated),
        cmdline,
        cpus,
        report_stats: cfg.stats,
    })
}

/// Steps 5-6: the kernel, initrd, command line, e820, ACPI and MP table
/// go into guest memory, then the gate opens.
pub fn boot(
    mut c: CreatedMachine,
    cfg: &VmConfig,
    kernel_image: &std::fs::File,
) -> Result<Machine, Error> {
    // 5. Boot.
    let boot = boot::setup(
        &c.vm.memory,
        &c.layout,
        &BootConfig {
            kernel_path: &cfg.kernel,
            kernel_image: boot::KernelImage::File(kernel_image),
            initrd: cfg.initrd.as_deref(),
            cmdline: &c.cmdline,
            boot_path: cfg.boot_path,
            acpi: AcpiConfig {
                cpus: c.cpus,
                apic: c.profile.apic,
                devices: std::mem::take(&mut c.devices.acpi),
            },
        },
    )?;
    log::info!(
        "kernel: {}, entered via {}",
        boot.kernel.unpacked,
        boot.entry.name()
    );
    log::info!("guest command line: {}", c.cmdline);
    crate::trace::mark("kernel loaded");
    for e in &boot.e820 {
        log::debug!("e820: {e}");
    }
    // 6. Machine init complete: the gate opens once every vCPU is there.
    let entry = boot.entry;
    c.start(Start::Boot(entry), cfg.sample_rip, Some(boot))
}

impl CreatedMachine {
    /// Waits until every vCPU thread has created and prepared its vCPU
    /// (a restore sets the VM's state only then).
    pub(super) fn vcpus_ready(&mut self) -> Result<(), Error> {
        self.pending.wait_created()?;
        log::debug!("{} vCPU(s) created, waiting for machine init", self.cpus);
        Ok(())
    }

    pub(super) fn com1(&self) -> &Arc<Mutex<SerialConsole>> {
        &self.devices.com1
    }

    pub(super) fn i8042(&self) -> &Arc<Mutex<I8042>> {
        &self.devices.i8042
    }

    pub(super) fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.virtio
    }

    pub(super) fn own_chips(&self) -> &OwnChips {
        &self.chips
    }

    pub(super) fn device_thread(&self) -> Option<&crate::devices::virtio::worker::DeviceThread> {
        self.device_thread.as_ref()
    }

    /// Hands the complete machine to the start gate, which opens when
    /// every vCPU is there (now, or when the last one arrives): each
    /// configures itself for `start` and runs (a restored one parks
    /// instead, until resumed). Fails, and the gate never opens, if a vCPU
    /// could not be created.
    pub(super) fn start(
        mut self,
        start: Start,
        sample_rip: bool,
        boot: Option<BootSetup>,
    ) -> Result<Machine, Error> {
        let restoring = matches!(start, Start::Restore(_));
        let pio = Arc::new(self.devices.pio);
        let mmio = Arc::new(self.devices.mmio);
        self.gate.open(Arc::new(MachineReady {
            pio: pio.clone(),
            mmio: mmio.clone(),
            lifecycle: self.lifecycle.clone(),
            memory: self.vm.memory.clone(),
            start,
            cpu_profile: self.profile,
            complete_gaps: self.complete_gaps,
            sync_regs: self.sync_regs,
            sample_rip,
            state_msrs: self.state_msrs,
            xsave_bytes: self.xsave_bytes,
            irqchip: self.chips.chip.clone(),
            ioapic: self.chips.ioapic.clone(),
        }));
        crate::trace::mark("machine ready");
        self.pending.wait_created()?;
        let vcpus = self.pending.release();
        Ok(Machine {
            vm: self.vm,
            lifecycle: self.lifecycle,
            vcpus,
            vcpu_responses: self.vcpu_responses,
            devices: DeviceManager {
                pio,
                mmio,
                com1: self.devices.com1,
                serial: self.devices.serial,
                i8042: self.devices.i8042,
                virtio: self.virtio,
                thread: self.device_thread,
                chips: self.chips,
            },
            paused: std::cell::Cell::new(restoring),
            paused_pit: std::cell::Cell::new(None),
            diff_base_lost: std::cell::Cell::new(false),
            sample_period_ms: if sample_rip { 10 } else { -1 },
            shape: self.shape,
            report_stats: self.report_stats,
            summary: BuildSummary {
                host: self.host,
                cmdline: self.cmdline,
                boot,
            },
        })
    }
}

#[cfg(test)]
mod tests;
