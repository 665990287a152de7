//! Quiet answers for ports a stock kernel pokes on every PC: PCI
//! configuration space (0xcf8/0xcfc) with no devices behind it. (POST
//! codes at 0x80 and I/O delays at 0xed need no device: the bus's sinks
//! take them.) Without them each access would be an "unowned port" and a
//! boot would count thousands.

use crate::devices::BusDevice;

/// PCI configuration mechanism #1 with an empty bus: the address register
/// at 0xcf8 holds what is written to it, every data read is all ones
/// ("no device").
#[derive(Default)]
pub struct PciConfigNoDevices {
    address: u32,
}

/// Placed at 0xcf8, length 8: offset 0..4 address, 4..8 data.
const ADDRESS: u64 = 0;

impl BusDevice for PciConfigNoDevices {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == ADDRESS && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == ADDRESS && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_latches_and_data_says_no_device() {
        let mut pci = PciConfigNoDevices::default();
        pci.write(0, &0x8000_0000u32.to_le_bytes());
        let mut a = [0u8; 4];
        pci.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        let mut vendor = [0u8; 2];
        pci.read(4, &mut vendor);
        assert_eq!(vendor, [0xff, 0xff]);
        // Byte access to the address register is not mechanism #1.
        let mut b = [0u8; 1];
        pci.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }
}
