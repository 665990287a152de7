//! A machine's rebirth from a snapshot: the same shape built again
//! (`builder::create`), guest RAM mapped from the memory file, the saved
//! state put back in the order that keeps it whole (chips and clock,
//! devices, then each vCPU on its own thread), and the machine left
//! paused until it is resumed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::builder::{self, CreatedMachine};
use super::layout::MemoryLayout;
use crate::config::{self, VmConfig};
use crate::devices::bus;
use crate::devices::manager::restore_devices;
use crate::irqchip::IrqchipMode;
use crate::lifecycle::StopReason;
use crate::machine::Machine;
use crate::persist::{self, file, memory, Overrides, Snapshot};
use crate::vcpu::{Start, VcpuResponse};

/// How long each vCPU has to take its state.
const VCPU_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] file::Error),
    #[error("memory file {path}: {source}")]
    MemFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "memory file {path} is {found} bytes; the snapshot's guest has {expected} bytes of RAM"
    )]
    MemSize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("snapshot does not describe a machine Tsubame can build: {0}")]
    Shape(String),
    #[error("{0}")]
    Override(String),
    #[error(transparent)]
    Build(#[from] builder::Error),
    #[error("restoring {0}")]
    Restore(String),
}

#[derive(Clone, Debug, Default)]
pub struct LoadRequest {
    pub state_path: PathBuf,
    pub mem_path: PathBuf,
    pub overrides: Overrides,
    /// Keep KVM's dirty log from now on (Diff snapshots of this machine).
    pub track_dirty_pages: bool,
    /// Advance the guest's kvmclock by the time the snapshot slept.
    pub clock_realtime: bool,
}

/// The configuration to build, checked against the snapshot's own claims.
fn plan(base: &VmConfig, snap: &Snapshot, req: &LoadRequest) -> Result<VmConfig, Error> {
    let shape = &snap.machine;
    if shape.cpus == 0 || shape.cpus > config::MAX_VCPUS {
        return Err(Error::Shape(format!("{} vCPUs", shape.cpus)));
    }
    let mut ids: Vec<usize> = snap.vcpus.iter().map(|v| usize::from(v.id)).collect();
    ids.sort_unstable();
    if ids != (0..shape.cpus).collect::<Vec<_>>() {
        return Err(Error::Shape(format!(
            "{} vCPUs, but states for vCPUs {ids:?}",
            shape.cpus
        )));
    }
    // The chips a state is for: KVM's, or Tsubame's PIC, PIT and IOAPIC.
    let kvm_chips = snap.vm.chips.is_some();
    let own = (snap.devices.chip.is_some(), snap.devices.ioapic.is_some());
    let consistent = match shape.irqchip {
        IrqchipMode::Kernel => kvm_chips && own == (false, false),
        IrqchipMode::Split => !kvm_chips && own == (true, true),
        IrqchipMode::Userspace => false,
    };
    if !consistent {
        return Err(Error::Shape(format!(
            "--irqchip {}, with state for KVM's chips: {kvm_chips}, Tsubame's PIC and PIT: {}, its IOAPIC: {}",
            shape.irqchip.name(),
            own.0,
            own.1
        )));
    }
    let mut cfg = shape.to_config(base);
    cfg.track_dirty_pages |= req.track_dirty_pages;
    for (id, tap) in &req.overrides.taps {
        match cfg.nets.iter_mut().find(|n| n.id.as_deref() == Some(id)) {
            Some(n) => n.tap = tap.clone(),
            None => {
                let ids: Vec<&str> = cfg.nets.iter().filter_map(|n| n.id.as_deref()).collect();
                return Err(Error::Override(format!(
                    "network override for {id}: the snapshot's interfaces are {ids:?}"
                )));
            }
        }
    }
    if let Some(p) = &req.overrides.vsock_socket {
        match cfg.vsock.as_mut() {
            Some(v) => v.socket = p.clone(),
            None => {
                return Err(Error::Override(
                    "vsock override: the snapshot has no vsock device".into(),
                ))
            }
        }
    }
    if let Some(s) = &req.overrides.serial {
        cfg.serial = s.clone();
    }
    Ok(cfg)
}

fn check_ram(snap: &Snapshot, layout: &MemoryLayout) -> Result<(), Error> {
    let ours: Vec<(u64, u64)> = layout.ram.iter().map(|&(a, l)| (a.0, l)).collect();
    if ours != snap.ram {
        return Err(Error::Shape(format!(
            "RAM ranges {:x?} do not match the {} MiB layout {ours:x?}",
            snap.ram, snap.machine.memory_mib
        )));
    }
    Ok(())
}

/// Puts the VM's and the devices' state into the created machine.
fn put_state(c: &CreatedMachine, snap: &Snapshot, req: &LoadRequest) -> Result<(), Error> {
    if let Some(t) = c.device_thread() {
        t.pause(VCPU_TIMEOUT).map_err(Error::Restore)?;
    }
    persist::vm::restore(&c.vm.fd, &snap.vm, req.clock_realtime)
        .map_err(|e| Error::Restore(e.to_string()))?;
    restore_devices(
        c.com1(),
        c.i8042(),
        c.transports(),
        c.own_chips(),
        &snap.devices,
    )
    .map_err(Error::Restore)
}

/// Builds the machine `req` names, paused. A failure after the vCPUs
/// exist tears them down again before it is returned.
pub fn restore(base: &VmConfig, req: &LoadRequest) -> Result<Machine, Error> {
    let start = Instant::now();
    let snap = file::read(&req.state_path)?;
    for path in [&req.state_path, &req.mem_path] {
        crate::confine::landlock::grant(path, crate::confine::landlock::Grant::Read);
    }
    crate::trace::mark("restore: state file read");
    let cfg = plan(base, &snap, req)?;
    let layout =
        MemoryLayout::new(cfg.memory_mib).map_err(|e| Error::Shape(format!("memory: {e}")))?;
    check_ram(&snap, &layout)?;
    let mem_err = |source| Error::MemFile {
        path: req.mem_path.clone(),
        source,
    };
    let mem_file = std::fs::File::open(&req.mem_path).map_err(mem_err)?;
    let found = mem_file.metadata().map_err(mem_err)?.len();
    if found != layout.total() {
        return Err(Error::MemSize {
            path: req.mem_path.clone(),
            found,
            expected: layout.total(),
        });
    }
    let memory = memory::map_file(&mem_file, &layout, cfg.track_dirty_pages).map_err(mem_err)?;
    crate::trace::mark("restore: memory mapped");
    let mut created = builder::create(&cfg, layout, memory, builder::Purpose::Restore)?;
    created.vcpus_ready()?;
    crate::trace::mark("restore: machine created");
    put_state(&created, &snap, req)?;
    crate::trace::mark("restore: VM and device state set");

    let machine = created.start(Start::Restore(snap.vcpus), cfg.sample_rip, None)?;
    if let Err(why) = wait_for_vcpus(&machine) {
        machine
            .lifecycle()
            .request_stop(StopReason::VmmError(why.clone()));
        machine.discard();
        return Err(Error::Restore(why));
    }
    crate::trace::mark("restore: vCPU state set");
    // Paused from here: KVM's PIT goes back as saved when it resumes.
    machine
        .paused_pit
        .set(snap.vm.chips.as_ref().map(|c| c.pit));
    for t in &machine.devices.virtio {
        bus::lock(t).raise_pending();
    }
    let slept = persist::unix_now_ns().saturating_sub(snap.taken_unix_ns);
    log::info!(
        "restored {} vCPU(s), {} MiB in {:.3} ms (the snapshot slept {:.1} s)",
        cfg.cpus,
        cfg.memory_mib,
        start.elapsed().as_secs_f64() * 1e3,
        slept as f64 / 1e9
    );
    Ok(machine)
}

fn wait_for_vcpus(m: &Machine) -> Result<(), String> {
    let deadline = Instant::now() + VCPU_TIMEOUT;
    for _ in 0..m.vcpus.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.vcpu_responses.recv_timeout(left) {
            Ok((_, VcpuResponse::Restored(Ok(())))) => {}
            Ok((_, VcpuResponse::Restored(Err(e)))) => return Err(e),
            Ok((id, other)) => return Err(format!("vCPU {id} answered {other:?}")),
            Err(_) => return Err("a vCPU did not take its state in time".into()),
        }
    }
    Ok(())
}
