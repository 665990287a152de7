//! The snapshot loader as a hostile file drives it. Input byte 0 chooses:
//! odd, the rest is a whole file (header, checksum and all); even, the rest
//! is the state, framed with a valid header and checksum so it reaches the
//! decoder. Whatever decodes is then restored into fresh devices (serial,
//! i8042, virtio transports, Tsubame's PIC and PIT), the checks a real
//! restore runs before KVM, and a restored PIC and PIT are then driven.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmm::devices::legacy::{SerialConsole, SerialOutput, I8042};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::VirtioDevice;
use vmm::devices::IrqLine;
use vmm::irqchip::UserChip;
use vmm::persist::file;
use vmm::vcpu::handle::Wakeup;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        file::frame(rest)
    };
    let Ok(snap) = file::decode(&bytes) else {
        return;
    };
    let irq = || IrqLine::new().unwrap();
    let _ = SerialConsole::new(irq(), SerialOutput::Sink)
        .unwrap()
        .restore(&snap.devices.serial);
    let _ = I8042::new(irq(), Box::new(|| {})).restore(&snap.devices.i8042);
    let mem = common::memory(&[]);
    for (i, t) in snap.devices.virtio.iter().enumerate() {
        let device: Box<dyn VirtioDevice> = if i % 2 == 0 {
            Box::new(Rng::default())
        } else {
            let (f, sectors) = common::disk();
            Box::new(Block::with_file(f, sectors, false, "fuzz"))
        };
        let mut transport = MmioTransport::new(device, mem.clone(), irq()).unwrap();
        let _ = transport.restore(t);
        transport.backend().lock().unwrap().process_queue(0);
    }
    if let Some(saved) = &snap.devices.chip {
        let chip = UserChip::new(std::sync::Arc::new(Wakeup::default()));
        if chip.restore(saved).is_ok() {
            chip.with(false, |st, now| {
                for c in 0..3 {
                    st.pit.read(c, now);
                    st.pit.write(c, 0x12, now);
                }
                st.pit.write(3, 0xe2, now); // read-back of channel 0
                let _ = st.pit.read_port61(now);
                let _ = st.pit.next_irq0(now);
                st.pic.pulse(0);
                let _ = st.pic.acknowledge();
            });
        }
    }
});
