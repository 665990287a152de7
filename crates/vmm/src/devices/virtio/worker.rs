//! The device thread: waits on every queue's eventfd and every device's
//! host-side source (a tap, a socket set) and runs the device's processing,
//! so a notify costs a vCPU only the eventfd write (or nothing, with
//! ioeventfd).

use super::mmio::MmioTransport;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// What the thread watches: a queue's eventfd, or a device's host source.
enum Source {
    Queue(EventFd, usize),
    Io(std::os::fd::RawFd),
}

struct Watch {
    source: Source,
    transport: Arc<Mutex<MmioTransport>>,
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
                    source: Source::Queue(e.try_clone()?, queue),
                    transport: t.clone(),
                });
            }
            // The device owns the fd and outlives the thread (stopped first).
            if let Some(fd) = guard.io_source() {
                watches.push(Watch {
                    source: Source::Io(fd),
                    transport: t.clone(),
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
        let (fd, set) = match &w.source {
            Source::Queue(e, _) => (e.as_raw_fd(), EventSet::IN),
            Source::Io(fd) => (*fd, EventSet::IN | EventSet::EDGE_TRIGGERED),
        };
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, i as u64))?;
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
            match &w.source {
                Source::Queue(event, queue) => {
                    // Drain the counter first: a notify arriving during
                    // processing then wakes us again instead of being lost.
                    let _ = event.read();
                    crate::devices::bus::lock(&w.transport).process_queue(*queue);
                }
                Source::Io(_) => crate::devices::bus::lock(&w.transport).process_io(),
            }
        }
    }
}
