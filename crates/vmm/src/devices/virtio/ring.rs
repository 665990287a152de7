//! The device's side of a split virtqueue's rings (virtio 1.2, 2.7) on the
//! data path: the next available head, the used entries, and whether the
//! driver wants an interrupt. virtio-queue's `Queue` holds the queue's
//! state and sets it up; its own ring accesses go through vm-memory's
//! generic accessors (and re-read the available index for every chain),
//! about a tenth of a 4 KiB virtio-blk request's time. These do the same
//! through `HostRam`, with virtio-queue's rules: tests/ring.rs compares
//! the two on random sequences.

use super::ram::{HostRam, Span};
use std::sync::atomic::{fence, Ordering};
use virtio_queue::{Queue, QueueT};

/// `flags` and `idx` before each ring's entries.
const RING_HEADER: u64 = 4;
const AVAIL_ENTRY: u64 = 2;
const USED_ENTRY: u64 = 8;
/// `used_event` after the available ring, `avail_event` after the used.
const RING_EVENT: u64 = 2;
const DESC_SIZE: u64 = 16;

/// A queue's rings for one batch of chains: each looked up in guest RAM
/// once (a region search per ring access was a tenth of the device's own
/// time per 4 KiB virtio-blk read), and the driver's available index as
/// last read, which a batch reads once, and again only when it has caught
/// up. A ring not wholly in guest RAM (a broken driver) is reached access
/// by access through `HostRam`, with the same answers.
pub struct Rings<'m> {
    pub(super) desc: Option<Span<'m>>,
    avail: Option<Span<'m>>,
    used: Option<Span<'m>>,
    pub(super) end: Option<u16>,
}

impl<'m> Rings<'m> {
    pub fn new(queue: &Queue, ram: &HostRam<'m>) -> Rings<'m> {
        let size = u64::from(queue.size());
        let span = |at: u64, len: u64| ram.span(at, len as usize);
        Rings {
            desc: span(queue.desc_table(), size * DESC_SIZE),
            avail: span(
                queue.avail_ring(),
                RING_HEADER + size * AVAIL_ENTRY + RING_EVENT,
            ),
            used: span(
                queue.used_ring(),
                RING_HEADER + size * USED_ENTRY + RING_EVENT,
            ),
            end: None,
        }
    }

    /// Reads the available index again at the next pop (the driver has
    /// published more since).
    #[cfg(test)]
    pub fn forget_avail_index(&mut self) {
        self.end = None;
    }
}

fn load_u16(span: Option<&Span>, ram: &HostRam, gpa: u64, order: Ordering) -> Option<u16> {
    match span {
        Some(s) => s.load_u16(gpa, order),
        None => ram.load_u16(gpa, order),
    }
}

/// `next` as a slot of a ring of `size` entries; `size` is a power of two
/// (virtio-queue refuses any other), so a mask, not a division.
fn slot(next: u16, size: u16) -> Option<u64> {
    match size {
        0 => None,
        s if s.is_power_of_two() => Some(u64::from(next & (s - 1))),
        s => Some(u64::from(next % s)),
    }
}

/// Takes the next chain head the driver made available. None when there
/// is none, when the queue is not ready, or when the available index is
/// further ahead than the ring holds (a broken driver: nothing is taken,
/// as with virtio-queue, so it cannot make a device spin).
pub fn pop_avail(queue: &mut Queue, ram: &HostRam, rings: &mut Rings) -> Option<u16> {
    let ring = queue.avail_ring();
    if !queue.ready() || ring == 0 {
        return None;
    }
    let avail = rings.avail.as_ref();
    let next = queue.next_avail();
    let last = match rings.end {
        Some(last) if last != next => last,
        _ => {
            let last = load_u16(avail, ram, ring.checked_add(2)?, Ordering::Acquire)?;
            rings.end = Some(last);
            last
        }
    };
    let waiting = last.wrapping_sub(next);
    if waiting > queue.size() {
        // Not kept: a later look reads the index again.
        rings.end = None;
        return None;
    }
    if waiting == 0 {
        return None;
    }
    let slot = slot(next, queue.size())?;
    let at = ring.checked_add(RING_HEADER + slot * AVAIL_ENTRY)?;
    let head = load_u16(avail, ram, at, Ordering::Acquire)?;
    queue.set_next_avail(next.wrapping_add(1));
    Some(head)
}

/// Returns the chain at `head` to the driver, `len` bytes written into it,
/// and publishes the used index. False, and nothing returned, for a head
/// outside the descriptor table or a used ring outside guest RAM.
pub fn push_used(queue: &mut Queue, ram: &HostRam, rings: &Rings, head: u16, len: u32) -> bool {
    let size = queue.size();
    if head >= size {
        return false;
    }
    let next = queue.next_used();
    let ring = queue.used_ring();
    let Some(slot) = slot(next, size) else {
        return false;
    };
    let mut entry = [0u8; USED_ENTRY as usize];
    entry[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    entry[4..].copy_from_slice(&len.to_le_bytes());
    let Some(at) = ring.checked_add(RING_HEADER + slot * USED_ENTRY) else {
        return false;
    };
    let used = rings.used.as_ref();
    let written = match used {
        Some(s) => s.write(at, &entry),
        None => ram.write(at, &entry),
    };
    if !written {
        return false;
    }
    let next = next.wrapping_add(1);
    queue.set_next_used(next);
    // Release: the driver that sees the index sees the entry.
    ring.checked_add(2).is_some_and(|idx| match used {
        Some(s) => s.store_u16(idx, next, Ordering::Release),
        None => ram.store_u16(idx, next, Ordering::Release),
    })
}

/// Whether the driver wants an interrupt for the used entries added since
/// the used index was `since` (at the previous check). Without EVENT_IDX
/// always; with it, when the driver's `used_event` lies in
/// `[since, next_used)`, the inequality Linux's vring and virtio-queue
/// use. An unreadable `used_event` asks for one (a lost interrupt hangs a
/// driver; an extra one costs it a look).
pub fn needs_notification(queue: &Queue, ram: &HostRam, since: u16) -> bool {
    if !queue.event_idx_enabled() {
        return true;
    }
    // The used entries are visible before the driver's event is read.
    fence(Ordering::SeqCst);
    let used = queue.next_used();
    let at = queue
        .avail_ring()
        .checked_add(RING_HEADER + u64::from(queue.size()) * AVAIL_ENTRY);
    let Some(event) = at.and_then(|at| ram.load_u16(at, Ordering::Relaxed)) else {
        return true;
    };
    used.wrapping_sub(event).wrapping_sub(1) < used.wrapping_sub(since)
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
