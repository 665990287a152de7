//! The device thread: waits on every queue's eventfd and runs the device's
//! queue processing, so a notify costs a vCPU only the eventfd write (or
//! nothing, with ioeventfd).

use super::mmio::MmioTransport;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// A queue the thread watches: its eventfd, and which transport and queue
/// index it belongs to.
struct Watch {
    event: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    queue: usize,
}

impl DeviceThread {
    /// Starts the thread for `transports`. Returns `None` when there are none.
    pub fn spawn(
        transports: &[Arc<Mutex<MmioTransport>>],
    ) -> std::io::Result<Option<DeviceThread>> {
        if transports.is_empty() {
            return Ok(None);
        }
        let mut watches = Vec::new();
        for t in transports {
            let guard = crate::devices::bus::lock(t);
            for (queue, e) in guard.queue_events().iter().enumerate() {
                watches.push(Watch {
                    event: e.try_clone()?,
                    transport: t.clone(),
                    queue,
                });
            }
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_thread = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                if let Err(e) = run(&watches, &stop_thread) {
                    log::error!("virtio device thread: {e}");
                }
            })?;
        Ok(Some(DeviceThread {
            stop,
            handle: Some(handle),
        }))
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(watches: &[Watch], stop: &EventFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let epoll = Epoll::new()?;
    let stop_token = watches.len() as u64;
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, stop_token),
    )?;
    for (i, w) in watches.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            w.event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    let mut events = vec![EpollEvent::default(); watches.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == stop_token {
                return Ok(());
            }
            let Some(w) = watches.get(token as usize) else {
                continue;
            };
            // Drain the counter first: a notify arriving during processing
            // then wakes us again instead of being lost.
            let _ = w.event.read();
            crate::devices::bus::lock(&w.transport).process_queue(w.queue);
        }
    }
}
