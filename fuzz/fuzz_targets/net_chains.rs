//! virtio-net as a guest drives it: the input is guest memory holding a
//! receive queue (descriptors at 0, rings at 0x100/0x200) and a transmit
//! queue (at 0x400, 0x500, 0x600) and whatever they point at; its first
//! byte picks the negotiated features, and its last KiB is frames waiting
//! on the "tap" (a socket pair). Transmit and receive must never panic,
//! read or write outside memory, or pass on a chain that is not a frame.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use vmm::devices::virtio::net::{tap::Tap, Net, RX, TX};
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let Ok((tap, mut wire)) = Tap::socket_pair() else {
        return;
    };
    let mut net = Net::new(tap, [2, 0, 0, 0, 0, 1]);
    let features = net.features() & u64::from(data.first().copied().unwrap_or(0)).rotate_left(3);
    net.activate(features | vmm::devices::virtio::VIRTIO_F_VERSION_1);
    // Frames for the guest: the tail of the input, cut at each 0xff.
    let tail = &data[data.len().saturating_sub(1024)..];
    for frame in tail.split(|&b| b == 0xff).take(8) {
        let _ = wire.write(frame);
    }
    let mut queues = vec![common::queue(0), common::queue(0x400)];
    net.process_queue(TX, &mut queues, &mem);
    net.process_io(&mut queues, &mem);
    net.process_queue(RX, &mut queues, &mem);
});
