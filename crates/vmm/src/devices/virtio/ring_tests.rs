use super::*;
use crate::devices::virtio::test_util::Rng;
use crate::vm::GuestMemory;
use virtio_queue::QueueState;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x1_0000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x4000;

fn queue(size: u16, event_idx: bool, used: u64) -> Queue {
    Queue::try_from(QueueState {
        max_size: 256,
        size,
        ready: true,
        desc_table: 0x1000,
        avail_ring: AVAIL,
        used_ring: used,
        event_idx_enabled: event_idx,
        ..Default::default()
    })
    .unwrap()
}

/// One random run: the same driver actions on two copies of guest memory,
/// virtio-queue's own accessors on one, these on the other. Returns what
/// happened, so the caller can check every case came up.
fn run(r: &mut Rng, seen: &mut [u32; 6]) {
    let size = 1u16 << r.below(9);
    let event_idx = r.below(2) == 0;
    // Now and then the used ring's index lies past the end of RAM.
    let used_ring = if r.below(16) == 0 {
        MEM as u64 - 4
    } else {
        USED
    };
    let (ma, mb) = (
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
    );
    let (mut qa, mut qb) = (
        queue(size, event_idx, used_ring),
        queue(size, event_idx, used_ring),
    );
    let start = r.next() as u16;
    qa.set_next_avail(start);
    qb.set_next_avail(start);
    qa.set_next_used(start);
    qb.set_next_used(start);
    let both = |f: &dyn Fn(&GuestMemory)| {
        f(&ma);
        f(&mb);
    };
    both(&|m| m.write_obj(start, GuestAddress(AVAIL + 2)).unwrap());
    let (mut since, mut popped) = (start, Vec::new());
    // The rings looked up once, as a batch does.
    let mut rings = Rings::new(&qb, &HostRam::new(&mb));
    for _ in 0..64 {
        let ram = HostRam::new(&mb);
        match r.below(5) {
            // The driver makes k chains available (or, rarely, publishes
            // an index further ahead than the ring holds).
            0 => {
                let idx: u16 = ma.read_obj(GuestAddress(AVAIL + 2)).unwrap();
                let k = if r.below(10) == 0 {
                    size + 1 + r.below(4) as u16
                } else {
                    r.below(u64::from(size) + 1) as u16
                };
                for i in 0..k {
                    let slot = u64::from(idx.wrapping_add(i) % size);
                    let head = (r.below(u64::from(size) + 2)) as u16;
                    both(&|m| {
                        m.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                            .unwrap()
                    });
                }
                both(&|m| {
                    m.write_obj(idx.wrapping_add(k), GuestAddress(AVAIL + 2))
                        .unwrap()
                });
                // A device turn that starts now reads the new index
                // (virtio-queue reads it for every chain).
                rings.forget_avail_index();
            }
            // The device takes some.
            1 => {
                for _ in 0..r.below(6) {
                    let a = qa.pop_descriptor_chain(&ma).map(|c| c.head_index());
                    let b = pop_avail(&mut qb, &ram, &mut rings);
                    assert_eq!(a, b, "popped head");
                    assert_eq!(qa.next_avail(), qb.next_avail());
                    seen[usize::from(a.is_some())] += 1;
                    popped.extend(a);
                }
            }
            // The device returns some, or a head out of the table.
            2 => {
                for _ in 0..r.below(6) {
                    let head = match popped.pop() {
                        Some(h) if r.below(8) != 0 => h,
                        _ => r.below(u64::from(size) * 2) as u16,
                    };
                    let len = r.next() as u32;
                    let a = qa.add_used(&ma, head, len).is_ok();
                    let b = push_used(&mut qb, &ram, &rings, head, len);
                    assert_eq!(a, b, "used {head} accepted");
                    assert_eq!(qa.next_used(), qb.next_used());
                    seen[2 + usize::from(a)] += 1;
                }
            }
            // The driver moves its used_event.
            3 => {
                let at = GuestAddress(AVAIL + 4 + 2 * u64::from(size));
                let ev = if r.below(2) == 0 {
                    qa.next_used().wrapping_add(r.below(4) as u16)
                } else {
                    r.next() as u16
                };
                both(&|m| m.write_obj(ev, at).unwrap());
            }
            // The transport asks whether to interrupt.
            _ => {
                let a = qa.needs_notification(&ma).unwrap_or(true);
                let b = needs_notification(&qb, &ram, since);
                since = qb.next_used();
                assert_eq!(a, b, "notify (event_idx {event_idx})");
                seen[4 + usize::from(a)] += 1;
            }
        }
        let (mut ua, mut ub) = ([0u8; 4 + 8 * 256], [0u8; 4 + 8 * 256]);
        ma.read_slice(&mut ua, GuestAddress(USED)).unwrap();
        mb.read_slice(&mut ub, GuestAddress(USED)).unwrap();
        assert_eq!(ua, ub, "the used rings");
    }
}

/// Random driver behaviour: the rings and every decision come out as
/// virtio-queue's, the popped heads, the used entries and index, the
/// refusals and the interrupts.
#[test]
fn the_rings_agree_with_virtio_queue_on_random_runs() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut seen = [0u32; 6];
    for _ in 0..3000 {
        run(&mut r, &mut seen);
    }
    // none popped, popped, used refused, used, no interrupt, interrupt
    assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
}

#[test]
fn a_batch_reads_the_available_index_once() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut q = queue(8, false, USED);
    mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
    let ram = HostRam::new(&mem);
    let mut rings = Rings::new(&q, &ram);
    assert_eq!(pop_avail(&mut q, &ram, &mut rings), Some(0));
    // The driver publishes more: this batch finishes what it saw first,
    // then reads the index again.
    mem.write_obj(5u16, GuestAddress(AVAIL + 2)).unwrap();
    assert_eq!(rings.end, Some(3));
    for _ in 0..4 {
        assert!(pop_avail(&mut q, &ram, &mut rings).is_some());
    }
    assert_eq!(rings.end, Some(5));
    assert_eq!(pop_avail(&mut q, &ram, &mut rings), None);
}
