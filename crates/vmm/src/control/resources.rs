//! What a Firecracker client configures before `InstanceStart`, in
//! Firecracker's JSON shapes (`firecracker.yaml`): each body type, the
//! checks on it, and [`VmResources`], the pre-boot state that becomes a
//! [`VmConfig`]. `--config-file` and `GET /vm/config` use the same shapes.
//! Unknown fields are refused everywhere, as Firecracker refuses them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, NetConfig, VmConfig, VsockConfig, MAX_VCPUS};
use crate::devices::virtio::block::IoEngine;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u64,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// Tsubame's addition: `kernel` (default) or `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irqchip: Option<crate::irqchip::IrqchipMode>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: crate::config::DEFAULT_MEMORY_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
            irqchip: None,
        }
    }
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u64>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
    pub irqchip: Option<crate::irqchip::IrqchipMode>,
}

impl MachineConfig {
    pub fn apply(&self, u: MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: u.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: u.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: u.smt.unwrap_or(self.smt),
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: u.cpu_template.or_else(|| self.cpu_template.clone()),
            huge_pages: u.huge_pages.or_else(|| self.huge_pages.clone()),
            irqchip: u.irqchip.or(self.irqchip),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS as u64 {
            return Err(format!(
                "Invalid vCPU count: {} (1 to {MAX_VCPUS}).",
                self.vcpu_count
            ));
        }
        if self.mem_size_mib == 0 {
            return Err("Invalid memory size: 0 MiB.".into());
        }
        crate::vm::layout::MemoryLayout::new(self.mem_size_mib)
            .map_err(|e| format!("Invalid memory size: {e}."))?;
        if self.smt {
            return Err("SMT is not supported by Tsubame (smt must be false).".into());
        }
        match self.cpu_template.as_deref() {
            None | Some("None") => {}
            Some(t) => return Err(format!("CPU template {t} is not supported by Tsubame.")),
        }
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(h) => return Err(format!("huge_pages {h} is not supported by Tsubame.")),
        }
        Ok(())
    }
}

/// Rate limiters are not built; a request that sets one is refused
/// rather than silently run unlimited.
fn no_rate_limiter(v: &Option<serde_json::Value>, what: &str) -> Result<(), String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(format!(
            "{what}: rate limiters are not supported by Tsubame."
        )),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl Drive {
    pub fn validate(&self) -> Result<(), String> {
        if self.socket.is_some() {
            return Err("vhost-user drives (socket) are not supported by Tsubame.".into());
        }
        let path = self
            .path_on_host
            .as_deref()
            .ok_or("Drive path_on_host is required.")?;
        if let Err(e) = std::fs::metadata(path) {
            return Err(format!("Unable to open drive file {path}: {e}."));
        }
        match self.cache_type.as_deref() {
            // Tsubame always honours flushes, which is what both promise.
            None | Some("Unsafe") | Some("Writeback") => {}
            Some(c) => return Err(format!("Invalid cache_type {c} (Unsafe or Writeback).")),
        }
        self.engine()?;
        no_rate_limiter(&self.rate_limiter, "drive")
    }

    /// `io_engine`: Sync or Async as Firecracker has them; left out, the
    /// batched engine where the kernel allows it (the guest sees no
    /// difference).
    pub fn engine(&self) -> Result<IoEngine, String> {
        match self.io_engine.as_deref() {
            None => Ok(IoEngine::Auto),
            Some("Sync") => Ok(IoEngine::Sync),
            Some("Async") => Ok(IoEngine::Async),
            Some(e) => Err(format!("Invalid io_engine {e} (Sync or Async).")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

impl NetworkInterface {
    /// The `--net` form, which checks the tap name and the MAC.
    pub fn to_net_config(&self) -> Result<NetConfig, String> {
        no_rate_limiter(&self.rx_rate_limiter, "network interface")?;
        no_rate_limiter(&self.tx_rate_limiter, "network interface")?;
        if self.mtu.is_some() {
            return Err("mtu is not supported by Tsubame.".into());
        }
        let mut spec = format!("tap={}", self.host_dev_name);
        if let Some(mac) = &self.guest_mac {
            spec += &format!(",mac={mac}");
        }
        let mut n = spec
            .parse::<NetConfig>()
            .map_err(|e| format!("Invalid network interface: {e}."))?;
        n.id = Some(self.iface_id.clone());
        Ok(n)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u64,
    pub uds_path: String,
    /// Deprecated in Firecracker; accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl Vsock {
    pub fn to_vsock_config(&self) -> Result<VsockConfig, String> {
        let cid = u32::try_from(self.guest_cid)
            .map_err(|_| format!("Invalid guest_cid {}.", self.guest_cid))?;
        format!("cid={cid},socket={}", self.uds_path)
            .parse::<VsockConfig>()
            .map_err(|e| format!("Invalid vsock: {e}."))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default)]
    pub show_level: bool,
    #[serde(default)]
    pub show_log_origin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `GET /vm/config` and `--config-file`: the whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// IDs as Firecracker accepts them: 1 to 64 of [A-Za-z0-9_-].
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid ID: {id:?} (1 to 64 characters of A-Z, a-z, 0-9, '_' and '-')."
        ))
    }
}

/// The pre-boot state. Every setter checks its input and leaves the state
/// unchanged on error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmResources {
    pub boot_source: Option<BootSource>,
    pub machine: MachineConfig,
    pub drives: Vec<Drive>,
    pub nets: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<Entropy>,
    pub logger: Option<Logger>,
    pub metrics: Option<Metrics>,
}

impl VmResources {
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), String> {
        std::fs::File::open(&b.kernel_image_path).map_err(|e| {
            format!(
                "The kernel file cannot be opened: {} ({e}).",
                b.kernel_image_path
            )
        })?;
        if let Some(initrd) = &b.initrd_path {
            std::fs::File::open(initrd)
                .map_err(|e| format!("The initrd file cannot be opened: {initrd} ({e})."))?;
        }
        self.boot_source = Some(b);
        Ok(())
    }

    pub fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), String> {
        m.validate()?;
        self.machine = m;
        Ok(())
    }

    /// Adds the drive, or replaces the one with its ID. One root device.
    pub fn set_drive(&mut self, d: Drive) -> Result<(), String> {
        check_id(&d.drive_id)?;
        d.validate()?;
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err("A root block device already exists!".into());
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(slot) => *slot = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    pub fn set_net(&mut self, n: NetworkInterface) -> Result<(), String> {
        check_id(&n.iface_id)?;
        n.to_net_config()?;
        let clash = self.nets.iter().any(|o| {
            o.iface_id != n.iface_id
                && (o.host_dev_name == n.host_dev_name
                    || (o.guest_mac.is_some() && o.guest_mac == n.guest_mac))
        });
        if clash {
            return Err(format!(
                "The host device {} or guest MAC is already in use by another interface.",
                n.host_dev_name
            ));
        }
        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(slot) => *slot = n,
            None => self.nets.push(n),
        }
        Ok(())
    }

    pub fn set_vsock(&mut self, v: Vsock) -> Result<(), String> {
        v.to_vsock_config()?;
        self.vsock = Some(v);
        Ok(())
    }

    pub fn set_entropy(&mut self, e: Entropy) -> Result<(), String> {
        no_rate_limiter(&e.rate_limiter, "entropy")?;
        self.entropy = Some(e);
        Ok(())
    }

    /// Everything, in `GET /vm/config`'s shape.
    pub fn full_config(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine.clone()),
            drives: self.drives.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// A configuration file's contents, checked as the API would check
    /// each part. Errors name the key.
    pub fn from_full_config(f: FullVmConfiguration) -> Result<VmResources, String> {
        let mut r = VmResources::default();
        if let Some(m) = f.machine_config {
            r.set_machine_config(m)
                .map_err(|e| format!("machine-config: {e}"))?;
        }
        if let Some(b) = f.boot_source {
            r.set_boot_source(b)
                .map_err(|e| format!("boot-source: {e}"))?;
        }
        for d in f.drives {
            let id = d.drive_id.clone();
            r.set_drive(d).map_err(|e| format!("drives[{id}]: {e}"))?;
        }
        for n in f.network_interfaces {
            let id = n.iface_id.clone();
            r.set_net(n)
                .map_err(|e| format!("network-interfaces[{id}]: {e}"))?;
        }
        if let Some(v) = f.vsock {
            r.set_vsock(v).map_err(|e| format!("vsock: {e}"))?;
        }
        if let Some(e) = f.entropy {
            r.set_entropy(e).map_err(|e| format!("entropy: {e}"))?;
        }
        r.logger = f.logger;
        r.metrics = f.metrics;
        Ok(r)
    }

    /// What `tsubame run` was given, in the API's shapes (for
    /// `GET /vm/config` of a machine started from the command line).
    pub fn from_vm_config(cfg: &VmConfig) -> VmResources {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        VmResources {
            boot_source: Some(BootSource {
                kernel_image_path: path(&cfg.kernel),
                initrd_path: cfg.initrd.as_deref().map(path),
                boot_args: cfg.cmdline.clone(),
            }),
            machine: MachineConfig {
                vcpu_count: cfg.cpus as u64,
                mem_size_mib: cfg.memory_mib,
                track_dirty_pages: cfg.track_dirty_pages,
                irqchip: (!cfg.irqchip.in_kernel()).then_some(cfg.irqchip),
                ..MachineConfig::default()
            },
            drives: cfg
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| Drive {
                    drive_id: d.id.clone().unwrap_or_else(|| format!("disk{i}")),
                    path_on_host: Some(path(&d.path)),
                    is_read_only: d.read_only,
                    ..Drive::default()
                })
                .collect(),
            nets: cfg
                .nets
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkInterface {
                    iface_id: n.id.clone().unwrap_or_else(|| format!("net{i}")),
                    host_dev_name: n.tap.clone(),
                    guest_mac: n.mac.map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    }),
                    ..NetworkInterface::default()
                })
                .collect(),
            vsock: cfg.vsock.as_ref().map(|v| Vsock {
                guest_cid: u64::from(v.cid),
                uds_path: path(&v.socket),
                vsock_id: None,
            }),
            entropy: cfg.rng.then(Entropy::default),
            logger: None,
            metrics: None,
        }
    }

    /// The machine to build at `InstanceStart`. The root device (if any)
    /// becomes the first disk, `/dev/vda`, and the kernel is told so, as
    /// Firecracker does.
    pub fn to_vm_config(&self, base: &VmConfig) -> Result<VmConfig, String> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or("Cannot start microvm without kernel configuration.")?;
        let mut cfg = base.clone();
        cfg.kernel = PathBuf::from(&boot.kernel_image_path);
        cfg.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
        cfg.cpus = self.machine.vcpu_count as usize;
        cfg.memory_mib = self.machine.mem_size_mib;
        cfg.track_dirty_pages = self.machine.track_dirty_pages;
        cfg.irqchip = self.machine.irqchip.unwrap_or(base.irqchip);
        let mut drives: Vec<&Drive> = self.drives.iter().collect();
        drives.sort_by_key(|d| !d.is_root_device);
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| crate::config::DEFAULT_CMDLINE.to_string());
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            let dev = match &root.partuuid {
                Some(p) => format!("PARTUUID={p}"),
                None => "/dev/vda".into(),
            };
            let mode = if root.is_read_only { "ro" } else { "rw" };
            let (kernel, init) = match cmdline.find(" -- ") {
                Some(i) => (cmdline[..i].to_string(), cmdline[i..].to_string()),
                None => (cmdline.clone(), String::new()),
            };
            cmdline = format!("{kernel} root={dev} {mode}{init}");
        }
        cfg.cmdline = Some(cmdline);
        cfg.disks = drives
            .iter()
            .map(|d| DiskConfig {
                path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
                read_only: d.is_read_only,
                id: Some(d.drive_id.chars().take(20).collect()),
                engine: d.engine().unwrap_or_default(),
            })
            .collect();
        cfg.nets = self
            .nets
            .iter()
            .map(NetworkInterface::to_net_config)
            .collect::<Result<_, _>>()?;
        cfg.vsock = self
            .vsock
            .as_ref()
            .map(Vsock::to_vsock_config)
            .transpose()?;
        cfg.rng = self.entropy.is_some();
        Ok(cfg)
    }
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
