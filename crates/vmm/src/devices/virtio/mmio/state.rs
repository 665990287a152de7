//! The transport's part of a snapshot: its registers and every queue's
//! position, with the device's own state inside.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{MmioTransport, RING_EVENT_IDX, STATUS_DRIVER_OK};
use crate::devices::virtio::DeviceState;

/// One queue (virtio-queue's `QueueState`, which has no serde of its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<SavedQueue>,
    pub device: DeviceState,
}

impl MmioTransport {
    /// Saved with the device thread paused: no queue is being worked on.
    pub fn save(&mut self) -> Result<TransportState, String> {
        let mut b = self.lock_backend();
        let queues = b
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                SavedQueue {
                    max_size: s.max_size,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx_enabled: s.event_idx_enabled,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            queues,
            device: b.device.save()?,
        })
    }

    /// Takes a saved state; every value is checked as if a driver had
    /// written it (the file is not trusted). A running driver gets its
    /// device activated again, as it was.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), String> {
        let name = self.name();
        if s.device_type != self.device_type {
            return Err(format!(
                "{name}: the snapshot has device type {} here",
                s.device_type
            ));
        }
        let mut guard = self.lock_backend();
        let b = &mut *guard;
        if s.queues.len() != b.queues.len() {
            return Err(format!(
                "{name}: {} queues saved, the device has {}",
                s.queues.len(),
                b.queues.len()
            ));
        }
        let offered = self.device_features;
        if s.driver_features & !offered != 0 {
            return Err(format!(
                "{name}: saved driver features {:#x} were never offered ({offered:#x})",
                s.driver_features
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (q, saved)) in b.queues.iter().zip(&s.queues).enumerate() {
            let state = QueueState {
                max_size: q.max_size(),
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: saved.event_idx_enabled
                    && s.driver_features & RING_EVENT_IDX != 0,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
            let q = Queue::try_from(state).map_err(|e| format!("{name}: queue {i}: {e}"))?;
            if s.status & STATUS_DRIVER_OK != 0 && q.ready() && !q.is_valid(&b.mem) {
                return Err(format!("{name}: queue {i}: rings outside guest memory"));
            }
            queues.push(q);
        }
        b.device.restore(&s.device)?;
        b.queues = queues;
        b.queues_set();
        drop(guard);
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.interrupt.set(s.interrupt_status);
        self.config_generation = s.config_generation;
        let active = self.is_active();
        let mut guard = self.lock_backend();
        let b = &mut *guard;
        b.active = active;
        if active {
            b.device.activate(self.driver_features);
            let used = b.device.restored(&mut b.queues, &b.mem);
            if used.any() {
                self.interrupt
                    .set(s.interrupt_status | super::INT_USED_RING);
            }
        }
        Ok(())
    }

    /// After a restore, once the vCPUs have their LAPICs back: an
    /// interrupt the driver had not acknowledged is raised again (an edge
    /// in flight at snapshot time may not have reached the saved chips).
    pub fn raise_pending(&mut self) {
        if self.interrupt.status() != 0 {
            self.interrupt.pulse(self.name);
        }
    }
}
