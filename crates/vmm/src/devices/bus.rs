//! One address-range bus, used twice: for port I/O and for MMIO. Devices
//! implement [`BusDevice`] and see only an offset into their own range; they
//! know nothing of KVM or of which vCPU is asking.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the base it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// What answers a range: a device behind its lock, or a sink (writes
/// dropped, reads all ones) for ports a guest writes only for the delay
/// (Linux's `outb_p`, which the PIC and PIT drivers use, writes port 0x80
/// after each access): no lock to take on such an exit (~17 ns of a
/// synthetic one, `bench exits`).
enum Owner {
    Device(SharedDevice),
    Sink,
}

/// One device behind a second range: an access at `offset` reaches it at
/// `offset + shift` (the i8042's ports 0x60 and 0x64, with 0x61 between
/// them belonging to someone else).
pub struct Shifted {
    pub device: SharedDevice,
    pub shift: u64,
}

impl BusDevice for Shifted {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut d = self.device.lock().unwrap_or_else(|e| e.into_inner());
        d.read(offset + self.shift, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut d = self.device.lock().unwrap_or_else(|e| e.into_inner());
        d.write(offset + self.shift, data);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{name}: empty range at {base:#x}")]
    Empty { name: String, base: u64 },
    #[error("{name}: range {base:#x}+{len:#x} wraps around the address space")]
    Overflow { name: String, base: u64, len: u64 },
    #[error("{name}: range {base:#x}+{len:#x} overlaps {other} at {other_base:#x}+{other_len:#x}")]
    Overlap {
        name: String,
        base: u64,
        len: u64,
        other: String,
        other_base: u64,
        other_len: u64,
    },
}

/// Index of a device on its bus, stable for the bus's life; used by stats.
pub type DeviceIndex = usize;

struct Entry {
    base: u64,
    len: u64,
    index: DeviceIndex,
}

/// A device's place on the bus, as reported by [`Bus::devices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub name: String,
    pub base: u64,
    pub len: u64,
}

/// Address ranges mapped to devices. Built once during machine init, then
/// shared read-only by every vCPU thread.
#[derive(Default)]
pub struct Bus {
    /// Sorted by base, never overlapping: a binary search finds the owner
    /// of an address (a BTreeMap range walk was most of a PIO exit's
    /// dispatch time).
    ranges: Vec<Entry>,
    devices: Vec<(Placement, Owner)>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(p, _)| p))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Maps `[base, base+len)` to `device`. Overlaps are refused: two
    /// devices can never both answer one address.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<DeviceIndex, Error> {
        self.place(name, base, len, Owner::Device(device))
    }

    /// Maps `[base, base+len)` to a sink: owned (counted under `name`),
    /// writes dropped, reads all ones.
    pub fn insert_sink(&mut self, name: &str, base: u64, len: u64) -> Result<DeviceIndex, Error> {
        self.place(name, base, len, Owner::Sink)
    }

    fn place(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        owner: Owner,
    ) -> Result<DeviceIndex, Error> {
        if len == 0 {
            return Err(Error::Empty {
                name: name.into(),
                base,
            });
        }
        let last = base.checked_add(len - 1).ok_or(Error::Overflow {
            name: name.into(),
            base,
            len,
        })?;
        // The only candidate for overlap: the range starting at or below
        // `last` with the highest start.
        let at = self.ranges.partition_point(|e| e.base <= last);
        if let Some(other) = at.checked_sub(1).map(|i| &self.ranges[i]) {
            let other_base = other.base;
            if other_base + (other.len - 1) >= base {
                let placed = &self.devices[other.index].0;
                return Err(Error::Overlap {
                    name: name.into(),
                    base,
                    len,
                    other: placed.name.clone(),
                    other_base,
                    other_len: other.len,
                });
            }
        }
        let index = self.devices.len();
        self.devices.push((
            Placement {
                name: name.into(),
                base,
                len,
            },
            owner,
        ));
        // Nothing between `at - 1` and `at` overlaps: `at` keeps the order.
        self.ranges.insert(at, Entry { base, len, index });
        Ok(index)
    }

    /// The device owning `addr`, with `addr`'s offset into its range.
    pub fn find(&self, addr: u64) -> Option<(DeviceIndex, u64)> {
        let at = self.ranges.partition_point(|e| e.base <= addr);
        let entry = &self.ranges[at.checked_sub(1)?];
        let offset = addr - entry.base;
        (offset < entry.len).then_some((entry.index, offset))
    }

    /// Reads from the device at `addr`. Returns the device's index, or
    /// `None` (and all ones in `data`) when no device owns the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<DeviceIndex> {
        let Some((index, offset)) = self.find(addr) else {
            data.fill(0xff);
            return None;
        };
        match &self.devices[index].1 {
            Owner::Device(d) => lock(d).read(offset, data),
            Owner::Sink => data.fill(0xff),
        }
        Some(index)
    }

    /// Writes to the device at `addr`; `None` when no device owns it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<DeviceIndex> {
        let (index, offset) = self.find(addr)?;
        if let Owner::Device(d) = &self.devices[index].1 {
            lock(d).write(offset, data);
        }
        Some(index)
    }

    /// Every device's placement, in insertion order (index order).
    pub fn devices(&self) -> impl Iterator<Item = &Placement> {
        self.devices.iter().map(|(p, _)| p)
    }

    pub fn placement(&self, index: DeviceIndex) -> Option<&Placement> {
        self.devices.get(index).map(|(p, _)| p)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Locks a device, surviving a panic in another thread that held it: a
/// device's state is plain data and stays usable.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn lookup_finds_the_owner_and_offset() {
        let mut bus = Bus::new();
        let a = probe();
        let b = probe();
        bus.insert("a", 0x3f8, 8, a.clone()).unwrap();
        bus.insert("b", 0x400, 0x10, b.clone()).unwrap();
        assert_eq!(bus.find(0x3f8), Some((0, 0)));
        assert_eq!(bus.find(0x3ff), Some((0, 7)));
        assert_eq!(bus.find(0x400), Some((1, 0)));
        assert_eq!(bus.find(0x40f), Some((1, 0xf)));
        assert_eq!(bus.find(0x3f7), None);
        assert_eq!(bus.find(0x410), None);
        assert_eq!(bus.find(0), None);

        let mut data = [0u8; 1];
        assert_eq!(bus.read(0x3fd, &mut data), Some(0));
        assert_eq!(data, [5]);
        assert_eq!(bus.write(0x402, &[1, 2]), Some(1));
        assert_eq!(b.lock().unwrap().last_write, Some((2, vec![1, 2])));
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn a_sink_owns_its_range_and_reads_all_ones() {
        let mut bus = Bus::new();
        let a = probe();
        bus.insert("a", 0x70, 2, a.clone()).unwrap();
        assert_eq!(bus.insert_sink("post-code", 0x80, 1), Ok(1));
        assert_eq!(bus.write(0x80, &[0x12]), Some(1));
        let mut data = [0u8; 2];
        assert_eq!(bus.read(0x80, &mut data), Some(1));
        assert_eq!(data, [0xff, 0xff]);
        assert!(a.lock().unwrap().last_write.is_none());
        assert_eq!(bus.placement(1).map(|p| p.name.as_str()), Some("post-code"));
        assert!(bus.insert_sink("overlap", 0x71, 1).is_err());
    }

    #[test]
    fn unowned_addresses_read_all_ones() {
        let bus = Bus::new();
        let mut data = [0u8; 4];
        assert_eq!(bus.read(0xdead, &mut data), None);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.write(0xdead, &[1]), None);
    }

    #[test]
    fn overlaps_are_rejected() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 0x10, probe()).unwrap();
        // Same start, inside, straddling either end, covering.
        for (base, len) in [
            (0x100, 1),
            (0x108, 2),
            (0xf8, 0x10),
            (0x10f, 4),
            (0x0, 0x1000),
        ] {
            let err = bus.insert("b", base, len, probe()).unwrap_err();
            assert!(
                matches!(&err, Error::Overlap { other, .. } if other == "a"),
                "{base:#x}+{len:#x}: {err}"
            );
        }
        // Touching ranges are fine.
        bus.insert("below", 0xf0, 0x10, probe()).unwrap();
        bus.insert("above", 0x110, 0x10, probe()).unwrap();
        assert_eq!(bus.len(), 3);
    }

    /// Random placements: `insert` refuses exactly the overlapping ones,
    /// and `find` names the owner a linear scan names, at every address
    /// near a range's ends.
    #[test]
    fn find_agrees_with_a_scan_of_random_placements() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..200 {
            let mut bus = Bus::new();
            let mut placed: Vec<(u64, u64, DeviceIndex)> = Vec::new();
            for _ in 0..12 {
                let (base, len) = (next(0x400), 1 + next(0x40));
                let overlaps = placed
                    .iter()
                    .any(|&(b, l, _)| base < b + l && b < base + len);
                match bus.insert("d", base, len, probe()) {
                    Ok(i) => {
                        assert!(!overlaps, "{base:#x}+{len:#x} overlaps");
                        placed.push((base, len, i));
                    }
                    Err(_) => assert!(overlaps, "{base:#x}+{len:#x} refused"),
                }
            }
            for &(b, l, _) in &placed {
                for addr in [b.saturating_sub(1), b, b + l - 1, b + l] {
                    let want = placed
                        .iter()
                        .find(|&&(pb, pl, _)| (pb..pb + pl).contains(&addr))
                        .map(|&(pb, _, i)| (i, addr - pb));
                    assert_eq!(bus.find(addr), want, "{addr:#x}");
                }
            }
        }
    }

    #[test]
    fn empty_and_wrapping_ranges_are_rejected() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert("z", 0x10, 0, probe()),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            bus.insert("w", u64::MAX, 2, probe()),
            Err(Error::Overflow { .. })
        ));
        // The very last byte of the space is a valid one-byte range.
        bus.insert("top", u64::MAX, 1, probe()).unwrap();
        assert_eq!(bus.find(u64::MAX), Some((0, 0)));
    }
}
