use super::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

struct Rig {
    mem: GuestMemory,
    dev: Block,
    image: std::path::PathBuf,
}

thread_local! {
    /// The engine `rig` opens disks with, and whether the batched one
    /// sends every read to the ring (as without `RWF_NOWAIT`) instead of
    /// asking the page cache first (which answers every read here).
    static ENGINE: std::cell::Cell<(IoEngine, bool)> =
        const { std::cell::Cell::new((IoEngine::Sync, false)) };
}

/// Runs `test` on each engine, the batched one with and without the page
/// cache first (reads take a different path on each).
fn both(test: impl Fn()) {
    for engine in [
        (IoEngine::Sync, false),
        (IoEngine::Async, false),
        (IoEngine::Async, true),
    ] {
        ENGINE.set(engine);
        test();
    }
    ENGINE.set((IoEngine::Sync, false));
}

fn rig(sectors: u64, read_only: bool) -> Rig {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tsubame-blk-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    let pattern: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&image, &pattern).unwrap();
    let (engine, ring_only) = ENGINE.get();
    let mut dev = Block::open(&image, read_only, Some("tsubame-test-disk"), engine).unwrap();
    assert_eq!(dev.batched(), engine == IoEngine::Async);
    if ring_only {
        dev.ring_only_reads();
    }
    Rig { mem, dev, image }
}

/// A descriptor: (address, length, device-writable).
type D = (u64, u32, bool);

/// Puts `descs` on a fresh queue as one chain, runs the device, and
/// returns the used length (None: nothing was used).
fn run(rig: &mut Rig, descs: &[D]) -> Option<u32> {
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x10_0000), 16);
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let mut flags = if w { WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= NEXT;
            }
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (i + 1) as u16))
        })
        .collect();
    vq.build_desc_chain(&raw).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    rig.dev
        .process_queue(0, std::slice::from_mut(&mut q), &rig.mem);
    let used_idx: u16 = rig.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    if used_idx == 0 {
        return None;
    }
    let len: u32 = rig.mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
    Some(len)
}

fn header(rig: &Rig, at: u64, t: u32, sector: u64) {
    rig.mem
        .write_obj(
            RequestHeader {
                request_type: t,
                reserved: 0,
                sector,
            },
            GuestAddress(at),
        )
        .unwrap();
}

fn status(rig: &Rig, at: u64) -> u8 {
    rig.mem.read_obj(GuestAddress(at)).unwrap()
}

fn image(rig: &Rig) -> Vec<u8> {
    std::fs::read(&rig.image).unwrap()
}

const H: u64 = 0x1000; // header
const DATA: u64 = 0x2000;
const ST: u64 = 0x9000; // status

#[test]
fn read_in_the_usual_three_descriptors() {
    both(|| {
        let mut r = rig(16, false);
        header(&r, H, T_IN, 2);
        let used = run(&mut r, &[(H, 16, false), (DATA, 1024, true), (ST, 1, true)]);
        assert_eq!(used, Some(1025));
        assert_eq!(status(&r, ST), S_OK);
        let mut got = vec![0u8; 1024];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, image(&r)[1024..2048]);
    });
}

/// A read fills guest memory behind vm-memory's back, so it marks the
/// pages it filled dirty (a Diff snapshot must carry them), and only
/// those: one buffer (pread) and two (preadv).
#[test]
fn reads_mark_the_pages_they_fill_dirty() {
    both(|| {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::GuestMemoryBackend;
        let dirty = |r: &Rig, at: u64| r.mem.iter().next().unwrap().bitmap().dirty_at(at as usize);
        let mut r = rig(16, false);
        header(&r, H, T_IN, 0);
        assert!(!dirty(&r, DATA) && !dirty(&r, DATA + 0x1000));
        let used = run(&mut r, &[(H, 16, false), (DATA, 4096, true), (ST, 1, true)]);
        assert_eq!(used, Some(4097));
        assert!(dirty(&r, DATA), "the buffer's page");
        assert!(!dirty(&r, DATA + 0x1000), "the page past it");
        let mut r = rig(16, false);
        header(&r, H, T_IN, 0);
        let two = [
            (H, 16, false),
            (DATA, 512, true),
            (0x5000, 512, true),
            (ST, 1, true),
        ];
        assert_eq!(run(&mut r, &two), Some(1025));
        assert!(dirty(&r, DATA) && dirty(&r, 0x5000) && !dirty(&r, 0x4000));
    });
}

#[test]
fn read_with_header_split_and_data_sharing_the_status_descriptor() {
    both(|| {
        let mut r = rig(16, false);
        header(&r, H, T_IN, 1);
        // Header over two descriptors; data and status in one writable one.
        let used = run(
            &mut r,
            &[(H, 5, false), (H + 5, 11, false), (DATA, 513, true)],
        );
        assert_eq!(used, Some(513));
        assert_eq!(status(&r, DATA + 512), S_OK);
        let mut got = vec![0u8; 512];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, image(&r)[512..1024]);
    });
}

#[test]
fn write_then_flush_reach_the_file() {
    both(|| {
        let mut r = rig(16, false);
        header(&r, H, T_OUT, 3);
        // Header and data in one readable descriptor.
        r.mem
            .write_slice(&[0xab; 512], GuestAddress(H + 16))
            .unwrap();
        let used = run(&mut r, &[(H, 16 + 512, false), (ST, 1, true)]);
        assert_eq!(used, Some(1));
        assert_eq!(status(&r, ST), S_OK);
        assert_eq!(&image(&r)[1536..2048], &[0xab; 512][..]);
        header(&r, H, T_FLUSH, 0);
        assert_eq!(run(&mut r, &[(H, 16, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_OK);
    });
}

#[test]
fn get_id() {
    let mut r = rig(8, false);
    header(&r, H, T_GET_ID, 0);
    let used = run(&mut r, &[(H, 16, false), (DATA, 20, true), (ST, 1, true)]);
    assert_eq!(used, Some(21));
    let mut got = [0u8; 20];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..17], b"tsubame-test-disk");
    assert_eq!(status(&r, ST), S_OK);
}

#[test]
fn write_zeroes_and_discard() {
    let mut r = rig(16, false);
    header(&r, H, T_WRITE_ZEROES, 0);
    let seg = Segment {
        sector: 4,
        num_sectors: 2,
        flags: 0,
    };
    r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
    assert_eq!(run(&mut r, &[(H, 32, false), (ST, 1, true)]), Some(1));
    assert_eq!(status(&r, ST), S_OK);
    let img = image(&r);
    assert!(img[2048..3072].iter().all(|&b| b == 0));
    assert_ne!(img[3072], 0, "only the range is zeroed");
    assert_eq!(img.len(), 16 * 512, "the image keeps its size");

    header(&r, H, T_DISCARD, 0);
    let seg = Segment {
        sector: 8,
        num_sectors: 8,
        flags: 0,
    };
    r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
    assert_eq!(run(&mut r, &[(H, 32, false), (ST, 1, true)]), Some(1));
    assert_eq!(status(&r, ST), S_OK);
    // Unknown flags are unsupported.
    let seg = Segment {
        sector: 0,
        num_sectors: 1,
        flags: 2,
    };
    r.mem.write_obj(seg, GuestAddress(H + 16)).unwrap();
    header(&r, H, T_WRITE_ZEROES, 0);
    run(&mut r, &[(H, 32, false), (ST, 1, true)]);
    assert_eq!(status(&r, ST), S_UNSUPP);
}

#[test]
fn out_of_range_sectors_fail_without_touching_the_file() {
    both(|| {
        let mut r = rig(8, false);
        let before = image(&r);
        for sector in [7u64, 8, u64::MAX / 512, u64::MAX] {
            header(&r, H, T_OUT, sector);
            run(
                &mut r,
                &[(H, 16, false), (DATA, 1024, false), (ST, 1, true)],
            );
            assert_eq!(status(&r, ST), S_IOERR, "sector {sector}");
            header(&r, H, T_IN, sector);
            run(&mut r, &[(H, 16, false), (DATA, 1024, true), (ST, 1, true)]);
            assert_eq!(status(&r, ST), S_IOERR, "sector {sector}");
        }
        // Data not a whole number of sectors.
        header(&r, H, T_OUT, 0);
        run(&mut r, &[(H, 16, false), (DATA, 100, false), (ST, 1, true)]);
        assert_eq!(status(&r, ST), S_IOERR);
        assert_eq!(image(&r), before);
    });
}

#[test]
fn read_only_disks_refuse_writes() {
    both(|| {
        let mut r = rig(8, true);
        assert_ne!(r.dev.features() & F_RO, 0);
        let before = image(&r);
        for t in [T_OUT, T_WRITE_ZEROES, T_DISCARD] {
            header(&r, H, t, 0);
            r.mem
                .write_obj(
                    Segment {
                        sector: 0,
                        num_sectors: 1,
                        flags: 0,
                    },
                    GuestAddress(DATA),
                )
                .unwrap();
            run(&mut r, &[(H, 16, false), (DATA, 512, false), (ST, 1, true)]);
            assert_eq!(status(&r, ST), S_IOERR, "type {t}");
        }
        assert_eq!(image(&r), before);
    });
}

#[test]
fn unknown_type_is_unsupported() {
    let mut r = rig(8, false);
    header(&r, H, 99, 0);
    run(&mut r, &[(H, 16, false), (ST, 1, true)]);
    assert_eq!(status(&r, ST), S_UNSUPP);
}

#[test]
fn malformed_chains_get_an_error_or_are_dropped() {
    both(|| {
        let mut r = rig(8, false);
        // Short header.
        header(&r, H, T_IN, 0);
        r.mem.write_obj(0x55u8, GuestAddress(ST)).unwrap();
        assert_eq!(run(&mut r, &[(H, 8, false), (ST, 1, true)]), Some(1));
        assert_eq!(status(&r, ST), S_IOERR);
        // Status byte only in a read-only descriptor: nowhere to answer.
        r.mem.write_obj(0x55u8, GuestAddress(ST)).unwrap();
        assert_eq!(run(&mut r, &[(H, 16, false), (ST, 1, false)]), Some(0));
        assert_eq!(status(&r, ST), 0x55, "a read-only byte is never written");
        // Data buffers outside guest memory: an I/O error, nothing written
        // anywhere else.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(
                &mut r,
                &[(H, 16, false), (0xffff_0000_0000, 512, true), (ST, 1, true)]
            ),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_IOERR);
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(
                &mut r,
                &[(H, 16, false), (0x00ff_ff00, 0x1000, true), (ST, 1, true)]
            ),
            Some(1),
            "crosses the end of guest memory"
        );
        assert_eq!(status(&r, ST), S_IOERR);
        // A header outside guest memory: I/O error too.
        assert_eq!(
            run(&mut r, &[(0xffff_0000_0000, 16, false), (ST, 1, true)]),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_IOERR);
        // A status byte outside guest memory: dropped.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(&mut r, &[(H, 16, false), (0xffff_0000_0000, 1, true)]),
            Some(0)
        );
        // Zero-length descriptors contribute nothing.
        header(&r, H, T_IN, 0);
        assert_eq!(
            run(&mut r, &[(H, 16, false), (DATA, 0, true), (ST, 1, true)]),
            Some(1)
        );
        assert_eq!(status(&r, ST), S_OK);
        // Over-long data.
        header(&r, H, T_IN, 0);
        run(
            &mut r,
            &[
                (H, 16, false),
                (DATA, (MAX_REQUEST_BYTES + 512) as u32, true),
                (ST, 1, true),
            ],
        );
        assert_eq!(status(&r, ST), S_IOERR);
    });
}

#[test]
fn descriptor_loops_and_over_long_chains_end() {
    both(|| {
        let mut r = rig(8, false);
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x10_0000), 16);
        // Two descriptors pointing at each other.
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(H, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(ST, 1, WRITE | NEXT, 0)),
        ];
        for (i, d) in raw.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        header(&r, H, T_IN, 0);
        r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
        // Next index past the table: the chain is cut, never followed.
        let raw = [RawDescriptor::from(SplitDescriptor::new(H, 16, NEXT, 200))];
        vq.desc_table().store(0, raw[0]).unwrap();
        vq.avail().idx().store(2);
        vq.avail().ring().ref_at(1).unwrap().store(0);
        r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
    });
}

#[test]
fn a_buffer_past_the_end_of_the_address_space_is_dropped() {
    both(|| {
        // Found by the blk_request fuzz target: the end of the status
        // buffer overflowed.
        let mut r = rig(8, false);
        header(&r, 0x1000, T_IN, 0);
        let used = run(&mut r, &[(0x1000, 16, false), (u64::MAX - 7, 16, true)]);
        assert_eq!(used, Some(0));
    });
}

#[test]
fn a_corrupt_available_index_does_not_spin_the_device() {
    // Found by the blk_request fuzz target: an index far ahead of the
    // ring made every pop fail while "more" stayed true.
    let mut r = rig(8, false);
    let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x10_0000), 16);
    vq.avail().idx().store(0x0202);
    let mut q: Queue = vq.create_queue().unwrap();
    let used = r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
    assert!(!used.any());
}

#[test]
fn odd_sized_images_are_refused() {
    let dir = std::env::temp_dir().join(format!("tsubame-blk-odd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("odd.img");
    std::fs::write(&p, [0u8; 1000]).unwrap();
    let e = Block::open(&p, false, None, IoEngine::Auto)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("odd.img") && e.contains("512"), "{e}");
    let e = Block::open(&dir.join("missing.img"), false, None, IoEngine::Auto)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.img"), "{e}");
}

#[test]
fn config_space_reports_capacity() {
    let r = rig(24, false);
    let mut cap = [0u8; 8];
    r.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 24);
}

#[test]
fn counters_follow_the_requests() {
    both(|| {
        let mut r = rig(8, false);
        header(&r, H, T_IN, 0);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 1024, true), (0x3000, 1, true)],
        );
        header(&r, H, T_OUT, 2);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 512, false), (0x3000, 1, true)],
        );
        header(&r, H, T_FLUSH, 0);
        run(&mut r, &[(H, 16, false), (0x3000, 1, true)]);
        header(&r, H, T_IN, 100);
        run(
            &mut r,
            &[(H, 16, false), (DATA, 512, true), (0x3000, 1, true)],
        );
        run(&mut r, &[(H, 16, false)]);
        let c = r.dev.counters;
        assert_eq!(
            (c.reads, c.read_bytes, c.writes, c.write_bytes),
            (1, 1024, 1, 512)
        );
        assert_eq!((c.flushes, c.errors, c.malformed), (1, 1, 1));
        let named = r.dev.counters();
        assert!(named.contains(&("reads", 1)) && named.contains(&("malformed", 1)));
    });
}

/// Several chains in one turn, as a driver with a deep queue posts them:
/// reads on either side of a write see the image before and after it, a
/// flush follows the write, and the chains come back in the order posted.
#[test]
fn a_turn_of_reads_a_write_and_a_flush_keeps_their_order() {
    use crate::devices::virtio::ring_driver::RingDriver;
    both(|| {
        let mut r = rig(16, false);
        let (mut drv, mut q) = RingDriver::new(&r.mem, 0x10_0000, 64).unwrap();
        let hdr = |i: usize| 0x1000 + 16 * i as u64;
        let st = |i: usize| 0x9000 + i as u64;
        let buf = |b: u64| 0x2_0000 + 0x1000 * b;
        let old = image(&r);
        r.mem
            .write_slice(&[0xee; 512], GuestAddress(buf(9)))
            .unwrap();
        // (type, sector, buffer)
        let reqs = [
            (T_IN, 3, 0),
            (T_IN, 4, 1),
            (T_OUT, 3, 9),
            (T_IN, 3, 2),
            (T_FLUSH, 0, 0),
            (T_IN, 5, 3),
        ];
        let mut heads = Vec::new();
        for (i, &(t, sector, b)) in reqs.iter().enumerate() {
            header(&r, hdr(i), t, sector);
            heads.push(drv.next_head());
            let chain = match t {
                T_FLUSH => vec![(hdr(i), 16, false), (st(i), 1, true)],
                _ => vec![
                    (hdr(i), 16, false),
                    (buf(b), 512, t == T_IN),
                    (st(i), 1, true),
                ],
            };
            drv.post(&r.mem, &chain).unwrap();
        }
        r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
        assert_eq!(drv.used_idx(&r.mem), reqs.len() as u16);
        for (i, &(t, ..)) in reqs.iter().enumerate() {
            assert_eq!(status(&r, st(i)), S_OK, "request {i}");
            let (head, len) = drv.used_entry(&r.mem, i as u16).unwrap();
            assert_eq!(head, u32::from(heads[i]), "returned in the order posted");
            assert_eq!(len, if t == T_IN { 513 } else { 1 });
        }
        let read = |b: u64| {
            let mut v = vec![0u8; 512];
            r.mem.read_slice(&mut v, GuestAddress(buf(b))).unwrap();
            v
        };
        assert_eq!(read(0), old[3 * 512..4 * 512], "before the write");
        assert_eq!(read(1), old[4 * 512..5 * 512]);
        assert_eq!(read(2), vec![0xee; 512], "after the write");
        assert_eq!(read(3), old[5 * 512..6 * 512]);
        assert_eq!(image(&r)[3 * 512..4 * 512], [0xee; 512]);
        assert_eq!(r.dev.counters.reads, 4);
    });
}

/// An image cut short behind the disk's back: a read across the new end
/// fails (the batched engine's short read is done again synchronously,
/// which finds the end), and the read before it still succeeds.
#[test]
fn a_read_across_a_truncated_end_fails() {
    both(|| {
        let mut r = rig(16, false);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&r.image)
            .unwrap()
            .set_len(8 * 512 + 256)
            .unwrap();
        header(&r, H, T_IN, 7);
        let used = run(&mut r, &[(H, 16, false), (DATA, 512, true), (ST, 1, true)]);
        assert_eq!((used, status(&r, ST)), (Some(513), S_OK));
        header(&r, H, T_IN, 8);
        let used = run(&mut r, &[(H, 16, false), (DATA, 1024, true), (ST, 1, true)]);
        assert_eq!((used, status(&r, ST)), (Some(1), S_IOERR));
    });
}

/// A read the page cache answers, posted among reads that wait for the
/// disk, waits in their batch instead of making it complete early: one
/// io_uring batch for the turn. Every read has the image's bytes and the
/// chains come back in the order posted.
#[test]
fn a_cached_read_among_disk_reads_stays_in_their_batch() {
    use crate::devices::virtio::ring_driver::RingDriver;
    use std::os::unix::fs::FileExt;
    ENGINE.set((IoEngine::Async, false));
    let mut r = rig(4096, false);
    ENGINE.set((IoEngine::Sync, false));
    let file = std::fs::File::open(&r.image).unwrap();
    if !route::drop_cache(&file, 1 << 20) {
        return;
    }
    // Sectors far apart (a miss's readahead brings in no other), the
    // middle one back in the cache.
    let sectors = [0u64, 1024, 3072];
    file.read_exact_at(&mut [0u8; 512], 1024 * 512).unwrap();
    let (mut drv, mut q) = RingDriver::new(&r.mem, 0x10_0000, 64).unwrap();
    let buf = |i: usize| 0x2_0000 + 0x1000 * i as u64;
    let mut heads = Vec::new();
    for (i, &sector) in sectors.iter().enumerate() {
        header(&r, H + 16 * i as u64, T_IN, sector);
        heads.push(drv.next_head());
        let chain = [
            (H + 16 * i as u64, 16, false),
            (buf(i), 512, true),
            (ST + i as u64, 1, true),
        ];
        drv.post(&r.mem, &chain).unwrap();
    }
    r.dev.process_queue(0, std::slice::from_mut(&mut q), &r.mem);
    let img = image(&r);
    for (i, &sector) in sectors.iter().enumerate() {
        assert_eq!(status(&r, ST + i as u64), S_OK, "request {i}");
        let (head, len) = drv.used_entry(&r.mem, i as u16).unwrap();
        assert_eq!((head, len), (u32::from(heads[i]), 513), "request {i}");
        let mut got = vec![0u8; 512];
        r.mem.read_slice(&mut got, GuestAddress(buf(i))).unwrap();
        let at = sector as usize * 512;
        assert_eq!(got, img[at..at + 512], "request {i}");
    }
    let c = r.dev.counters;
    assert_eq!((c.reads, c.ring_reads, c.ring_batches), (3, 2, 1));
}
