//! Placing virtio-mmio devices: each gets a 4 KiB window in the MMIO hole
//! and a GSI of its own, is described in the DSDT (`LNRO0005`, which
//! Linux's virtio_mmio driver matches) and on the command line
//! (`virtio_mmio.device=`, for kernels that only know that way), and has
//! its queue notifications wired to ioeventfds.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};

use super::layout::{MMIO_DEVICES_END, MMIO_DEVICES_START};
use crate::boot::acpi::{DeviceDescription, Hid, Resource};
use crate::config::VmConfig;
use crate::devices::virtio::block::{self, Block};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, WINDOW_SIZE};
use crate::devices::virtio::net::{tap, Net};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{Bus, IrqLine};
use crate::vm::GuestMemory;

/// GSIs 5..=23: above the legacy devices (i8042 on 1, COM1 on 4), within
/// the IOAPIC's 24 pins.
pub const GSI_BASE: u32 = 5;
pub const MAX_DEVICES: usize = 19;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--disk: {0}")]
    Disk(#[from] block::Error),
    #[error("--net: {0}")]
    Net(#[from] tap::Error),
    #[error("--vsock: {0}")]
    Vsock(#[from] crate::devices::virtio::vsock::Error),
    #[error("{0} virtio devices asked for; at most {MAX_DEVICES} are supported")]
    TooMany(usize),
    #[error("{name}: ioeventfd for queue {queue}: {source}")]
    Ioeventfd {
        name: &'static str,
        queue: usize,
        source: kvm_ioctls::Error,
    },
    #[error("{name}: {source}")]
    Setup {
        name: &'static str,
        source: std::io::Error,
    },
}

/// A device with its place, before the VM exists.
pub struct Planned {
    pub device: Box<dyn VirtioDevice>,
    pub base: u64,
    pub gsi: u32,
}

/// Opens what the devices need (disk images first: bad input fails before
/// any KVM state exists) and gives each its window and GSI.
pub fn plan(cfg: &VmConfig) -> Result<Vec<Planned>, Error> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in &cfg.disks {
        devices.push(Box::new(Block::open(
            &d.path,
            d.read_only,
            d.id.as_deref(),
            d.engine,
        )?));
    }
    if cfg.rng {
        devices.push(Box::new(Rng::default()));
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        let tap = tap::Tap::open(&n.tap)?;
        let mac = n.mac.unwrap_or([0x0e, 0x74, 0x73, 0x62, 0x00, i as u8 + 1]);
        devices.push(Box::new(Net::new(tap, mac)));
    }
    if let Some(v) = &cfg.vsock {
        devices.push(Box::new(Vsock::new(v.cid, &v.socket)?));
    }
    if devices.len() > MAX_DEVICES {
        return Err(Error::TooMany(devices.len()));
    }
    Ok(devices
        .into_iter()
        .enumerate()
        .map(|(i, device)| Planned {
            device,
            base: MMIO_DEVICES_START + i as u64 * WINDOW_SIZE,
            gsi: GSI_BASE + i as u32,
        })
        .collect())
}

const _: () = assert!(MMIO_DEVICES_START + MAX_DEVICES as u64 * WINDOW_SIZE <= MMIO_DEVICES_END);

/// `virtio_mmio.device=4K@0xd0000000:5`, one per device.
pub fn cmdline_params(planned: &[Planned]) -> Vec<String> {
    planned
        .iter()
        .map(|p| {
            format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                WINDOW_SIZE / 1024,
                p.base,
                p.gsi
            )
        })
        .collect()
}

/// The DSDT entries.
pub fn acpi_descriptions(planned: &[Planned]) -> Vec<DeviceDescription> {
    planned
        .iter()
        .enumerate()
        .map(|(i, p)| DeviceDescription {
            name: format!("VR{i:02X}"),
            hid: Hid::String("LNRO0005"),
            uid: i as u32,
            resources: vec![
                Resource::Mmio {
                    base: p.base as u32,
                    len: WINDOW_SIZE as u32,
                },
                Resource::Irq(p.gsi),
            ],
        })
        .collect()
}

/// Puts each device on the MMIO bus behind a transport, with its interrupt
/// (`irq(gsi)`, an irqfd) and, with `ioeventfd`, its queue ioeventfds.
pub fn attach(
    vm: &VmFd,
    memory: &GuestMemory,
    mmio: &mut Bus,
    planned: Vec<Planned>,
    ioeventfd: bool,
    mut irq: impl FnMut(u32) -> Result<IrqLine, super::builder::Error>,
) -> Result<Vec<Arc<Mutex<MmioTransport>>>, super::builder::Error> {
    let mut transports = Vec::new();
    for (i, p) in planned.into_iter().enumerate() {
        let name = p.device.name();
        let line = irq(p.gsi)?;
        let t = MmioTransport::new(p.device, memory.clone(), line)
            .map_err(|source| Error::Setup { name, source })?;
        let events = if ioeventfd { t.queue_events() } else { &[] };
        for (queue, e) in events.iter().enumerate() {
            vm.register_ioevent(
                e,
                &IoEventAddress::Mmio(p.base + QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(|source| Error::Ioeventfd {
                name,
                queue,
                source,
            })?;
        }
        log::info!("{name}: virtio-mmio at {:#x}, GSI {}", p.base, p.gsi);
        let t = Arc::new(Mutex::new(t));
        mmio.insert(&format!("{name}{i}"), p.base, WINDOW_SIZE, t.clone())?;
        transports.push(t);
    }
    Ok(transports)
}
