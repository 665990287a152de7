//! virtio-vsock with its host side: the input is guest memory holding the
//! receive, transmit and event queues (at 0, 0x400, 0x800; rings 0x100 and
//! 0x200 above each) and the packets the transmit chains point at. The
//! device talks to real Unix sockets: a host listener that never accepts
//! (guest connections to port 5000 fill its backlog) and the device's own.
//! Packets, however malformed, must never panic or grow the device.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use vmm::devices::virtio::vsock::{Vsock, EVENT, RX, TX};
use vmm::devices::virtio::VirtioDevice;

/// The device's socket path, and a listener at `<path>_5000` kept for the
/// process's life.
fn path() -> &'static PathBuf {
    static PATH: std::sync::OnceLock<(PathBuf, UnixListener)> = std::sync::OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("tsubame-fuzz-vsock-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join("v.sock");
            let _ = std::fs::remove_file(dir.join("v.sock_5000"));
            let l = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
            (path, l)
        })
        .0
}

fuzz_target!(|data: &[u8]| {
    let mem = common::memory(data);
    let Ok(mut dev) = Vsock::new(3, path()) else {
        return;
    };
    dev.activate(dev.features());
    let mut queues = vec![common::queue(0), common::queue(0x400), common::queue(0x800)];
    for round in 0..3 {
        dev.process_queue(TX, &mut queues, &mem);
        dev.process_io(&mut queues, &mem);
        dev.process_queue(RX, &mut queues, &mem);
        if round == 1 {
            dev.process_queue(EVENT, &mut queues, &mem);
        }
    }
    dev.reset();
});
