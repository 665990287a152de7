//! Console output that never blocks a vCPU: the UART's bytes go into a
//! bounded buffer, and a thread of their own writes them to stdout. When
//! nobody reads stdout (a full pipe), the buffer fills and further bytes
//! are dropped and counted, instead of the vCPU (and every thread waiting
//! on COM1's lock) blocking in write(2).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes held for stdout at most.
pub const CAPACITY: usize = 1 << 20;
/// How long a flush waits for the writer while it makes no progress.
const STALL: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    /// Bytes the writer has taken, ever (progress, for `flush`).
    taken: u64,
    /// Bytes the buffer had no room for.
    dropped: u64,
    /// The writer is writing a chunk it took.
    busy: bool,
    /// The console is gone: the writer ends once the buffer is empty.
    closed: bool,
    /// The writer waits for bytes: only then does a write wake it. (A
    /// condvar's notify is a system call whether or not anyone waits,
    /// and the UART writes a byte at a time.)
    writer_waits: bool,
    /// Threads in `drain`, which the writer's progress wakes.
    drainers: u32,
}

#[derive(Default)]
struct Shared {
    buf: Mutex<Buffer>,
    /// Signalled when bytes arrive, and when the writer takes or finishes.
    changed: Condvar,
}

/// The UART's writer for stdout (clones share the buffer).
#[derive(Clone)]
pub struct ConsoleOut {
    shared: Arc<Shared>,
}

impl ConsoleOut {
    /// Starts the writer thread on `out` (stdout in the VMM).
    pub fn spawn(mut out: impl Write + Send + 'static) -> io::Result<ConsoleOut> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if let Err(e) = crate::confine::install(crate::confine::ThreadKind::Console) {
                    // The vCPUs never wait for this thread: output is dropped.
                    log::error!("console: {e}; console output is dropped");
                    s.buf.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
                    return;
                }
                loop {
                    let chunk: Vec<u8> = {
                        let mut b = s.buf.lock().unwrap_or_else(|e| e.into_inner());
                        while b.bytes.is_empty() {
                            b.busy = false;
                            if b.drainers > 0 {
                                s.changed.notify_all();
                            }
                            if b.closed {
                                return;
                            }
                            b.writer_waits = true;
                            b = s.changed.wait(b).unwrap_or_else(|e| e.into_inner());
                            b.writer_waits = false;
                        }
                        let n = b.bytes.len().min(64 * 1024);
                        b.taken += n as u64;
                        b.busy = true;
                        if b.drainers > 0 {
                            s.changed.notify_all();
                        }
                        b.bytes.drain(..n).collect()
                    };
                    crate::faults::forbidden_call("console");
                    // Blocks only this thread. A closed stdout drops output.
                    let _ = out.write_all(&chunk).and_then(|()| out.flush());
                }
            })?;
        Ok(ConsoleOut { shared })
    }

    /// Ends the writer thread once what is buffered is written (or at
    /// once, if stdout is stuck: the thread then ends with the process).
    pub fn close(&self) {
        let mut b = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.closed = true;
        self.shared.changed.notify_all();
    }

    /// Bytes dropped so far because stdout did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.buf.lock().map(|b| b.dropped).unwrap_or(0)
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPACITY.saturating_sub(b.bytes.len());
        let n = data.len().min(room);
        b.bytes.extend(&data[..n]);
        b.dropped += (data.len() - n) as u64;
        let wake = b.writer_waits;
        // Woken while this thread still held the lock, the writer would
        // block on it at once: two more system calls per byte.
        drop(b);
        if wake {
            self.shared.changed.notify_all();
        }
        // The UART has no back-pressure: what did not fit is gone.
        Ok(data.len())
    }

    /// The UART flushes after every byte: nothing to wait for here (see
    /// [`ConsoleOut::drain`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleOut {
    /// Waits until everything buffered is written, for as long as the
    /// writer keeps making progress (a stuck stdout ends the wait after
    /// [`STALL`]). The machine drains at its end.
    pub fn drain(&self) {
        self.drain_within(STALL);
    }

    fn drain_within(&self, stall: Duration) {
        let mut b = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = b.taken;
        let mut since = Instant::now();
        b.drainers += 1;
        while !b.bytes.is_empty() || b.busy {
            if b.taken != seen {
                seen = b.taken;
                since = Instant::now();
            }
            let left = stall.saturating_sub(since.elapsed());
            if left.is_zero() {
                break;
            }
            b = self
                .shared
                .changed
                .wait_timeout(b, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        b.drainers -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (released?, bytes written) and its signal.
    type GateState = (Mutex<(bool, Vec<u8>)>, Condvar);

    /// A writer that blocks until released, then records.
    #[derive(Clone, Default)]
    struct Gate(Arc<GateState>);
    impl Write for Gate {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.0;
            let mut g = m.lock().unwrap();
            while !g.0 {
                g = c.wait(g).unwrap();
            }
            g.1.extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_never_blocks_the_writer_and_drops_what_does_not_fit() {
        let gate = Gate::default();
        let mut out = ConsoleOut::spawn(gate.clone()).unwrap();
        let t = Instant::now();
        for _ in 0..(CAPACITY / 1000 + 100) {
            assert_eq!(out.write(&[b'x'; 1000]).unwrap(), 1000);
        }
        out.flush().unwrap();
        out.drain();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "writes and drain return"
        );
        assert!(out.dropped() > 0, "the buffer is bounded");
        // Released, it writes what it held, in order.
        let (m, c) = &*gate.0;
        m.lock().unwrap().0 = true;
        c.notify_all();
        out.drain();
        out.write_all(b"end").unwrap();
        out.drain();
        let seen = m.lock().unwrap().1.clone();
        assert!(seen.ends_with(b"end"), "{} bytes", seen.len());
        assert!(seen.iter().take(seen.len() - 3).all(|&b| b == b'x'));
    }

    /// A drain is woken by the writer's progress, not by its stall
    /// time-out (here 20 s, so that only a missed wake-up takes that long).
    #[test]
    fn drain_returns_when_the_writer_has_written() {
        let gate = Gate::default();
        let mut out = ConsoleOut::spawn(gate.clone()).unwrap();
        out.write_all(b"held").unwrap();
        let stall = Duration::from_secs(20);
        std::thread::scope(|s| {
            let drainer = s.spawn(|| {
                let t = Instant::now();
                out.drain_within(stall);
                t.elapsed()
            });
            // Released only once the drain waits, so that it needs the wake.
            while out.shared.buf.lock().unwrap().drainers == 0 {
                std::thread::yield_now();
            }
            let (m, c) = &*gate.0;
            m.lock().unwrap().0 = true;
            c.notify_all();
            let took = drainer.join().unwrap();
            assert!(took < stall / 2, "drain waited {took:?}: no wake-up");
        });
        assert_eq!(gate.0 .0.lock().unwrap().1, b"held");
    }
}
