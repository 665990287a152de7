//! `Machine::snapshot`: a paused machine into a state file and a memory
//! file. Devices first (saving one may raise an interrupt, which then
//! reaches the chips before they are saved), then the VM's chips and
//! clock, then each vCPU, then RAM.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::{self, Written};
use super::{file, unix_now_ns, Snapshot, SnapshotKind};
use crate::machine::Machine;
use crate::vcpu::{VcpuRequest, VcpuResponse};

#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    pub kind: SnapshotKind,
    pub state_path: PathBuf,
    pub mem_path: PathBuf,
}

/// What a snapshot wrote, and how long it took.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotReport {
    pub state_bytes: usize,
    pub memory: Written,
    pub took: Duration,
}

pub const NOT_PAUSED: &str = "The microVM must be paused before a snapshot is taken.";
pub const DIFF_BASE_LOST: &str = "The last snapshot failed after taking the dirty page log: take a Full snapshot before the next Diff.";
pub const DIFF_NEEDS_TRACKING: &str = "Diff snapshots need dirty page tracking: set track_dirty_pages in the machine configuration (or when loading the snapshot).";

/// (st_dev, st_ino) of the files guest RAM is mapped from.
fn backing_files(m: &Machine) -> Vec<(u64, u64)> {
    m.memory()
        .iter()
        .filter_map(|r| r.file_offset())
        .filter_map(|fo| fo.file().metadata().ok())
        .map(|md| (md.dev(), md.ino()))
        .collect()
}

/// Refuses a path whose file backs guest RAM: writing it would change
/// the memory the snapshot is being read from.
fn not_backing(m: &Machine, path: &Path) -> Result<(), String> {
    if let Ok(md) = std::fs::metadata(path) {
        if backing_files(m).contains(&(md.dev(), md.ino())) {
            return Err(format!(
                "{}: this machine's memory is mapped from that file; write the snapshot elsewhere",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Where a file is written before it is renamed into place, so a failed
/// snapshot leaves any earlier one whole.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

fn open_memory_file(m: &Machine, path: &Path) -> Result<File, String> {
    not_backing(m, path)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial(path))
        .map_err(|e| {
            let hint = crate::confine::landlock::hint(&e);
            format!("memory file {}: {e}{hint}", path.display())
        })
}

impl Machine {
    /// Saves the paused machine. The machine stays paused.
    pub fn snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotReport, String> {
        let r = self.write_snapshot(req);
        let (mem_tmp, state_tmp) = (partial(&req.mem_path), partial(&req.state_path));
        let r = r.and_then(|report| {
            let rename = |from: &Path, to: &Path| {
                std::fs::rename(from, to).map_err(|e| format!("{}: {e}", to.display()))
            };
            // The state last: a state file names a complete memory file.
            rename(&mem_tmp, &req.mem_path)?;
            rename(&state_tmp, &req.state_path)?;
            Ok(report)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&mem_tmp);
            let _ = std::fs::remove_file(&state_tmp);
        }
        r
    }

    fn write_snapshot(&self, req: &SnapshotRequest) -> Result<SnapshotReport, String> {
        let start = Instant::now();
        if !self.is_paused() {
            return Err(NOT_PAUSED.into());
        }
        if !self.vm.irqchip.lapic_in_kernel() {
            return Err(format!(
                "Snapshots of a machine with --irqchip {} are not supported yet (vCPU 0's halted state and pending interrupt are Tsubame's there, and not saved); use --irqchip split or kernel.",
                self.vm.irqchip.name()
            ));
        }
        if req.kind == SnapshotKind::Diff && !self.vm.dirty_log {
            return Err(DIFF_NEEDS_TRACKING.into());
        }
        if req.kind == SnapshotKind::Diff && self.diff_base_lost.get() {
            return Err(DIFF_BASE_LOST.into());
        }
        if req.state_path == req.mem_path {
            return Err("snapshot_path and mem_file_path must be different files.".into());
        }
        not_backing(self, &req.state_path)?;
        let mem_file = open_memory_file(self, &req.mem_path)?;
        let devices = self.devices.save()?;
        let vm =
            super::vm::save(&self.vm.fd, self.vm.irqchip.in_kernel()).map_err(|e| e.to_string())?;
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for (_, answer) in self.ask_vcpus(VcpuRequest::Save)? {
            match answer {
                VcpuResponse::Saved(s) => vcpus.push((*s)?),
                other => return Err(format!("a vCPU answered {other:?} to Save")),
            }
        }
        vcpus.sort_by_key(|s| s.id);

        // Both dirty logs are taken (and so cleared) by every snapshot: a
        // Diff holds what changed since the snapshot before it.
        let mut dirty = if self.vm.dirty_log {
            Some(
                self.vm
                    .take_dirty_log()
                    .map_err(|e| format!("KVM_GET_DIRTY_LOG: {e}"))?,
            )
        } else {
            None
        };
        let device_dirty = memory::take_device_dirty(self.memory());
        // From here a failure loses the pages dirtied since the last
        // snapshot: only a Full can follow it.
        self.diff_base_lost.set(true);
        let io = |e: std::io::Error| format!("memory file {}: {e}", req.mem_path.display());
        let written = match (req.kind, dirty.as_mut()) {
            (SnapshotKind::Diff, Some(kvm)) => {
                for (k, d) in kvm.iter_mut().zip(&device_dirty) {
                    for (a, b) in k.iter_mut().zip(d) {
                        *a |= b;
                    }
                }
                memory::write_dirty(self.memory(), &mem_file, kvm).map_err(io)?
            }
            _ => memory::write_full(self.memory(), &mem_file).map_err(io)?,
        };
        let snapshot = Snapshot {
            machine: self.shape.clone(),
            ram: self
                .memory()
                .iter()
                .map(|r| (r.start_addr().0, r.len()))
                .collect(),
            devices,
            vm,
            vcpus,
            taken_unix_ns: unix_now_ns(),
        };
        let state_bytes =
            file::write(&partial(&req.state_path), &snapshot).map_err(|e| e.to_string())?;
        self.diff_base_lost.set(false);
        let report = SnapshotReport {
            state_bytes,
            memory: written,
            took: start.elapsed(),
        };
        log::info!(
            "{:?} snapshot in {:.3} ms: state {} bytes, memory {} of {} bytes written",
            req.kind,
            report.took.as_secs_f64() * 1e3,
            state_bytes,
            written.bytes,
            written.file_len
        );
        Ok(report)
    }
}
