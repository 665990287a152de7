//! The device thread: waits on every queue's eventfd and every device's
//! host-side source (a tap, a socket set) and runs the device's processing,
//! so a notify costs a vCPU only the eventfd write (or nothing, with
//! ioeventfd). While paused it takes no requests: notifies stay counted in
//! their eventfds, host input waits in its socket, and resuming runs every
//! queue once.

use super::mmio::{Backend, MmioTransport};
use crate::faults;
use crate::lifecycle::Lifecycle;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// What the controller asks of the device thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Pause,
    Resume,
    Stop,
}

pub struct DeviceThread {
    /// Written after each command, to wake the thread.
    wake: EventFd,
    commands: Sender<Command>,
    /// The thread acknowledges Pause and Resume here.
    acks: Receiver<Command>,
    /// Disconnected when the thread ends, however it ends.
    ended: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

/// How long a stop waits for a thread that is inside a device (a write or
/// `fdatasync` on a stalled file system): the process ends without it
/// rather than hang.
const STOP_WAIT: Duration = Duration::from_millis(400);

/// What the thread watches: a queue's eventfd, or a device's host source.
enum Source {
    Queue(EventFd, usize),
    Io(std::os::fd::RawFd),
}

struct Watch {
    source: Source,
    /// Only the device's half: the transport's registers stay free for
    /// the vCPUs while the device works (or is stuck in I/O).
    backend: Arc<Mutex<Backend>>,
}

impl DeviceThread {
    /// Starts the thread for `transports`. Returns `None` when there are
    /// none. A thread that dies (a panic, a failed event loop) stops the
    /// machine through `lifecycle`: guest I/O would hang without it.
    pub fn spawn(
        transports: &[Arc<Mutex<MmioTransport>>],
        lifecycle: Arc<Lifecycle>,
    ) -> std::io::Result<Option<DeviceThread>> {
        if transports.is_empty() {
            return Ok(None);
        }
        let mut watches = Vec::new();
        for t in transports {
            let guard = crate::devices::bus::lock(t);
            let backend = guard.backend();
            for (queue, e) in guard.queue_events().iter().enumerate() {
                watches.push(Watch {
                    source: Source::Queue(e.try_clone()?, queue),
                    backend: backend.clone(),
                });
            }
            // The device owns the fd and outlives the thread (stopped first).
            let io = crate::devices::bus::lock(&backend).io_source();
            if let Some(fd) = io {
                watches.push(Watch {
                    source: Source::Io(fd),
                    backend: backend.clone(),
                });
            }
        }
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let wake_thread = wake.try_clone()?;
        let (commands, commands_rx) = mpsc::channel();
        let (acks_tx, acks) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                let _ended = ended_tx;
                // Filtered before it touches a queue.
                if let Err(e) = crate::confine::install(crate::confine::ThreadKind::Device) {
                    return lifecycle.thread_died(e.to_string());
                }
                let control = Control {
                    wake: wake_thread,
                    commands: commands_rx,
                    acks: acks_tx,
                };
                if let Some(Err(e)) = lifecycle.supervise(|| run(&watches, &control)) {
                    lifecycle.thread_died(e);
                }
            })?;
        Ok(Some(DeviceThread {
            wake,
            commands,
            acks,
            ended,
            handle: Some(handle),
        }))
    }

    fn command(&self, c: Command) {
        let _ = self.commands.send(c);
        let _ = self.wake.write(1);
    }

    /// Sends `c` and waits (bounded) for the thread to acknowledge it.
    fn command_acked(&self, c: Command, timeout: Duration) -> Result<(), String> {
        self.command(c);
        match self.acks.recv_timeout(timeout) {
            Ok(ack) if ack == c => Ok(()),
            Ok(other) => Err(format!("device thread answered {other:?} to {c:?}")),
            Err(e) => Err(format!("device thread did not answer {c:?}: {e}")),
        }
    }

    /// Stops taking requests; returns once the thread is between requests.
    pub fn pause(&self, timeout: Duration) -> Result<(), String> {
        self.command_acked(Command::Pause, timeout)
    }

    /// Takes requests again, starting with one pass over every queue.
    pub fn resume(&self, timeout: Duration) -> Result<(), String> {
        self.command_acked(Command::Resume, timeout)
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        drop(self);
    }
}

/// A machine whose build fails halfway drops its device thread: the thread
/// ends with it (and lets go of the transports, their disks and sockets).
impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.command(Command::Stop);
        if self.ended.recv_timeout(STOP_WAIT) == Err(mpsc::RecvTimeoutError::Timeout) {
            log::warn!(
                "virtio device thread still inside a device after {STOP_WAIT:?}: not waited for"
            );
            return;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The thread's end of the command channel.
struct Control {
    wake: EventFd,
    commands: Receiver<Command>,
    acks: Sender<Command>,
}

impl Control {
    /// The next command, waiting on the wake eventfd when there is none.
    fn wait(&self) -> Command {
        loop {
            if let Ok(c) = self.commands.try_recv() {
                return c;
            }
            let mut fds = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.wake),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
            let _ = self.wake.read();
        }
    }
}

/// Every queue and host source once, as after a resume: work that arrived
/// while paused is picked up.
fn process_all(watches: &[Watch]) {
    for w in watches {
        match &w.source {
            Source::Queue(event, queue) => {
                let _ = event.read();
                faults::forbidden_call("virtio");
                if faults::armed(faults::VIRTIO_PANIC) {
                    panic!("injected fault {}", faults::VIRTIO_PANIC);
                }
                crate::devices::bus::lock(&w.backend).process_queue(*queue);
            }
            Source::Io(_) => crate::devices::bus::lock(&w.backend).process_io(),
        }
    }
}

/// The thread's one subscriber: every queue and host source, and the
/// command eventfd. Its data is the watch's index; the command eventfd's
/// is one past the last.
struct Worker<'a> {
    watches: &'a [Watch],
    control: &'a Control,
    stopped: bool,
    /// Why the thread cannot go on (an fd it cannot watch).
    failed: Option<String>,
}

impl Worker<'_> {
    fn command_token(&self) -> u32 {
        self.watches.len() as u32
    }

    /// Carries out waiting commands; a pause blocks here until resumed.
    fn commands(&mut self) {
        let _ = self.control.wake.read();
        while let Ok(c) = self.control.commands.try_recv() {
            match c {
                Command::Stop => self.stopped = true,
                Command::Resume => {
                    let _ = self.control.acks.send(Command::Resume);
                }
                Command::Pause => {
                    let _ = self.control.acks.send(Command::Pause);
                    loop {
                        match self.control.wait() {
                            Command::Stop => {
                                self.stopped = true;
                                return;
                            }
                            Command::Pause => {
                                let _ = self.control.acks.send(Command::Pause);
                            }
                            Command::Resume => break,
                        }
                    }
                    process_all(self.watches);
                    let _ = self.control.acks.send(Command::Resume);
                }
            }
            if self.stopped {
                return;
            }
        }
    }
}

impl MutEventSubscriber for Worker<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        let mut failed = None;
        let mut add = |fd, data, set| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, set)) {
                failed.get_or_insert(format!("cannot watch fd {fd}: {e}"));
            }
        };
        add(
            self.control.wake.as_raw_fd(),
            self.command_token(),
            EventSet::IN,
        );
        for (i, w) in self.watches.iter().enumerate() {
            match &w.source {
                Source::Queue(e, _) => add(e.as_raw_fd(), i as u32, EventSet::IN),
                Source::Io(fd) => add(*fd, i as u32, EventSet::IN | EventSet::EDGE_TRIGGERED),
            }
        }
        self.failed = failed;
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.stopped || self.failed.is_some() {
            return;
        }
        if faults::armed(faults::VIRTIO_ERROR) {
            self.failed = Some(format!("injected fault {}", faults::VIRTIO_ERROR));
            return;
        }
        if events.data() == self.command_token() {
            return self.commands();
        }
        let Some(w) = self.watches.get(events.data() as usize) else {
            return;
        };
        match &w.source {
            Source::Queue(event, queue) => {
                // Drain the counter first: a notify arriving during
                // processing then wakes us again instead of being lost.
                let _ = event.read();
                faults::forbidden_call("virtio");
                if faults::armed(faults::VIRTIO_PANIC) {
                    panic!("injected fault {}", faults::VIRTIO_PANIC);
                }
                crate::devices::bus::lock(&w.backend).process_queue(*queue);
            }
            Source::Io(_) => crate::devices::bus::lock(&w.backend).process_io(),
        }
    }
}

/// The thread's loop, until stopped; an error means it could not go on.
fn run(watches: &[Watch], control: &Control) -> Result<(), String> {
    let em = |e: event_manager::Error| format!("event loop: {e}");
    let mut manager = EventManager::new().map_err(em)?;
    let id = manager.add_subscriber(Worker {
        watches,
        control,
        stopped: false,
        failed: None,
    });
    loop {
        let worker = manager.subscriber_mut(id).map_err(em)?;
        if let Some(why) = worker.failed.take() {
            return Err(why);
        }
        if worker.stopped {
            return Ok(());
        }
        manager.run().map_err(em)?;
    }
}
