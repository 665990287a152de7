//! Firecracker's snapshot request bodies (`PUT /snapshot/create`,
//! `PUT /snapshot/load`), checked on the API thread, and what they become
//! for the VMM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::persist::save::SnapshotRequest;
use crate::persist::SnapshotKind;
use crate::vm::restore::LoadRequest;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    File,
    Uffd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: BackendType,
    pub backend_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// The older form of `mem_backend` (a File backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// The older name of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest's kvmclock by the time the snapshot slept.
    #[serde(default)]
    pub clock_realtime: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

fn non_empty(what: &str, s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err(format!("{what} must not be empty."))
    } else {
        Ok(PathBuf::from(s))
    }
}

impl SnapshotCreateParams {
    pub fn to_request(&self) -> Result<SnapshotRequest, String> {
        Ok(SnapshotRequest {
            kind: match self.snapshot_type {
                SnapshotType::Full => SnapshotKind::Full,
                SnapshotType::Diff => SnapshotKind::Diff,
            },
            state_path: non_empty("snapshot_path", &self.snapshot_path)?,
            mem_path: non_empty("mem_file_path", &self.mem_file_path)?,
        })
    }
}

impl SnapshotLoadParams {
    pub fn to_request(&self) -> Result<LoadRequest, String> {
        let mem = match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err("Only one of mem_backend and mem_file_path may be given.".into())
            }
            (None, None) => return Err("mem_backend (or mem_file_path) is required.".into()),
            (Some(b), None) if b.backend_type == BackendType::Uffd => {
                return Err(
                    "The Uffd memory backend is not supported by Tsubame (use File).".into(),
                )
            }
            (Some(b), None) => &b.backend_path,
            (None, Some(p)) => p,
        };
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(h) => return Err(format!("huge_pages {h} is not supported by Tsubame.")),
        }
        let mut taps = Vec::new();
        for o in &self.network_overrides {
            if o.host_dev_name.is_empty() || o.host_dev_name.len() > 15 {
                return Err(format!(
                    "Network override for {}: host_dev_name must be 1 to 15 bytes.",
                    o.iface_id
                ));
            }
            taps.push((o.iface_id.clone(), o.host_dev_name.clone()));
        }
        Ok(LoadRequest {
            state_path: non_empty("snapshot_path", &self.snapshot_path)?,
            mem_path: non_empty("mem_backend.backend_path", mem)?,
            overrides: crate::persist::Overrides {
                taps,
                vsock_socket: self
                    .vsock_override
                    .as_ref()
                    .map(|v| non_empty("vsock_override.uds_path", &v.uds_path))
                    .transpose()?,
                serial: None,
            },
            track_dirty_pages: self.track_dirty_pages || self.enable_diff_snapshots,
            clock_realtime: self.clock_realtime,
        })
    }
}
