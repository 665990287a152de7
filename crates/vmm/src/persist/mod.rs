//! Sleep: a paused machine saved to two files, and brought back from them
//! in a new process. Each part of the machine saves and restores its own
//! `*State` (devices beside their code, KVM state here); this module holds
//! the whole [`Snapshot`] and the files.
//!
//! - [`file`]: the state file (magic, version, checksum, bounds).
//! - [`memory`]: the memory file (Full, Diff, rebase, `MAP_PRIVATE` restore).
//! - [`vcpu`], [`vm`]: KVM's per-vCPU and per-VM state, in KVM's orders.
//! - [`save`]: `Machine::snapshot`; the restore is in `vm::restore`.

pub mod file;
pub mod memory;
pub mod save;
pub mod vcpu;
pub mod vm;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, NetConfig, ProfileChoice, SerialConfig, VmConfig, VsockConfig};
use crate::devices::legacy::{I8042State, SerialState};
use crate::devices::virtio::mmio::TransportState;
use crate::irqchip::ioapic::IoApicRegs;
use crate::irqchip::state::UserChipState;
use crate::irqchip::IrqchipMode;

/// Everything but guest RAM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub machine: MachineShape,
    /// Guest RAM as (guest address, length), in memory-file order.
    pub ram: Vec<(u64, u64)>,
    pub devices: DevicesState,
    pub vm: vm::VmState,
    pub vcpus: Vec<vcpu::VcpuState>,
    /// Host wall-clock time of the snapshot (ns since the epoch), to log
    /// how long the machine slept.
    pub taken_unix_ns: u64,
}

/// The machine's shape: what must be built again, the same, to take the
/// saved state. Host paths of disks, taps and sockets are the user's
/// (overrides replace taps and the vsock socket on load).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineShape {
    pub cpus: usize,
    pub memory_mib: u64,
    /// Where the interrupt controllers are (`kernel` or `split`).
    pub irqchip: IrqchipMode,
    /// The CPU profile the guest was given (the emulation-only one?).
    pub emulated: bool,
    pub complete_gaps: bool,
    pub ioeventfd: bool,
    pub track_dirty_pages: bool,
    pub disks: Vec<SavedDisk>,
    pub rng: bool,
    pub nets: Vec<SavedNet>,
    pub vsock: Option<SavedVsock>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedNet {
    /// The interface's ID (the API's `iface_id`; `net<n>` from the
    /// command line), which network overrides name.
    pub id: String,
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedVsock {
    pub cid: u32,
    pub socket: PathBuf,
}

/// The devices' state, saved before KVM's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialState,
    pub i8042: I8042State,
    pub virtio: Vec<TransportState>,
    /// Tsubame's PIC pair and PIT, and its IOAPIC (`split`).
    pub chip: Option<UserChipState>,
    pub ioapic: Option<IoApicRegs>,
}

impl MachineShape {
    pub fn of(cfg: &VmConfig, emulated: bool) -> MachineShape {
        MachineShape {
            cpus: cfg.cpus,
            memory_mib: cfg.memory_mib,
            irqchip: cfg.irqchip,
            emulated,
            complete_gaps: cfg.complete_gaps,
            ioeventfd: cfg.ioeventfd,
            track_dirty_pages: cfg.track_dirty_pages,
            disks: cfg
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    id: d.id.clone(),
                })
                .collect(),
            rng: cfg.rng,
            nets: cfg
                .nets
                .iter()
                .enumerate()
                .map(|(i, n)| SavedNet {
                    id: n.id.clone().unwrap_or_else(|| format!("net{i}")),
                    tap: n.tap.clone(),
                    mac: n.mac,
                })
                .collect(),
            vsock: cfg.vsock.as_ref().map(|v| SavedVsock {
                cid: v.cid,
                socket: v.socket.clone(),
            }),
        }
    }

    /// The configuration that builds this machine again; no kernel (the
    /// guest is in the memory file).
    pub fn to_config(&self, base: &VmConfig) -> VmConfig {
        VmConfig {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            irqchip: self.irqchip,
            profile: if self.emulated {
                ProfileChoice::Emulated
            } else {
                ProfileChoice::Native
            },
            complete_gaps: self.complete_gaps,
            ioeventfd: self.ioeventfd,
            track_dirty_pages: self.track_dirty_pages,
            disks: self
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    id: d.id.clone(),
                    // A host choice, not the guest's: not in the snapshot.
                    engine: Default::default(),
                })
                .collect(),
            rng: self.rng,
            nets: self
                .nets
                .iter()
                .map(|n| NetConfig {
                    id: Some(n.id.clone()),
                    tap: n.tap.clone(),
                    mac: n.mac,
                })
                .collect(),
            vsock: self.vsock.as_ref().map(|v| VsockConfig {
                cid: v.cid,
                socket: v.socket.clone(),
            }),
            serial: base.serial.clone(),
            ..base.clone()
        }
    }
}

/// What a restore may change: taps by interface, the vsock socket, where
/// the console goes.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// (interface ID, new tap name).
    pub taps: Vec<(String, String)>,
    pub vsock_socket: Option<PathBuf>,
    pub serial: Option<SerialConfig>,
}

/// Full or Diff (Firecracker's `snapshot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    Full,
    Diff,
}

pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small snapshot with recognisable values (no KVM needed).
    pub fn sample() -> Snapshot {
        let vcpu = |id: u8| vcpu::VcpuState {
            id,
            mp_state: Default::default(),
            regs: kvm_bindings::kvm_regs {
                rip: 0x1234,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: vec![7; 1024],
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            tsc_khz: Some(2_000_000),
            cpuid: vec![Default::default(); 3],
            msrs: vec![kvm_bindings::kvm_msr_entry {
                index: 0x10,
                data: 99,
                ..Default::default()
            }],
            events: Default::default(),
            repairs: None,
        };
        Snapshot {
            machine: MachineShape::of(&VmConfig::new("k"), true),
            ram: vec![(0, 128 << 20)],
            devices: DevicesState {
                serial: SerialState {
                    scratch: 0x5a,
                    ..Default::default()
                },
                i8042: I8042State {
                    ctr: 0x45,
                    last_was_command: false,
                    pending: crate::devices::legacy::i8042::Pending::KeyboardCommand,
                    out: vec![(0xfa, false)],
                    last_read: 0,
                },
                virtio: Vec::new(),
                chip: None,
                ioapic: None,
            },
            vm: vm::VmState {
                chips: Some(vm::KernelChips {
                    pic_master: Default::default(),
                    pic_slave: Default::default(),
                    ioapic: Default::default(),
                    pit: Default::default(),
                }),
                clock: Default::default(),
            },
            vcpus: vec![vcpu(0), vcpu(1)],
            taken_unix_ns: 1,
        }
        .with_cpus(2)
    }

    impl Snapshot {
        fn with_cpus(mut self, n: usize) -> Snapshot {
            self.machine.cpus = n;
            self
        }
    }
}
