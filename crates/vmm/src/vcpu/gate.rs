//! The start gate between "vCPU created" and "first KVM_RUN". It opens
//! when the machine is complete (the builder hands over what the vCPUs
//! run with) and every vCPU has arrived prepared, whichever comes last,
//! and the party that completes it goes straight on. The builder used to
//! wait for the vCPUs and then open the gate: two sleeping threads woken
//! one after the other on the start path, 0.1-0.2 ms each on the
//! emulation-only host, where the vCPU that arrives last now just runs.

use std::sync::{Arc, Condvar, Mutex};

use super::MachineReady;

enum State<T> {
    Closed {
        ready: Option<Arc<T>>,
        arrived: usize,
    },
    Open(Arc<T>),
    Aborted,
}

/// Generic in what it hands over only so that tests need no machine.
pub struct StartGate<T = MachineReady> {
    vcpus: usize,
    state: Mutex<State<T>>,
    opened: Condvar,
}

impl<T> StartGate<T> {
    /// A gate for `vcpus` vCPU threads.
    pub fn new(vcpus: usize) -> StartGate<T> {
        StartGate {
            vcpus,
            state: Mutex::new(State::Closed {
                ready: None,
                arrived: 0,
            }),
            opened: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the gate if the machine is ready and every vCPU is there.
    fn open_if_complete(&self, s: &mut State<T>) {
        if let State::Closed {
            ready: Some(ready),
            arrived,
        } = s
        {
            if *arrived == self.vcpus {
                *s = State::Open(ready.clone());
                self.opened.notify_all();
                crate::trace::mark("start gate opened");
            }
        }
    }

    /// The machine is complete: the gate opens now if every vCPU has
    /// arrived, else when the last one does. Ignored once aborted.
    pub fn machine_ready(&self, value: Arc<T>) {
        let mut s = self.lock();
        if let State::Closed { ready, .. } = &mut *s {
            *ready = Some(value);
        }
        self.open_if_complete(&mut s);
    }

    /// A prepared vCPU arrives and waits for the gate to open: what the
    /// machine runs with, or `None` if building it failed (aborted).
    pub fn arrive_and_wait(&self) -> Option<Arc<T>> {
        let mut s = self.lock();
        if let State::Closed { arrived, .. } = &mut *s {
            *arrived += 1;
        }
        self.open_if_complete(&mut s);
        loop {
            match &*s {
                State::Closed { .. } => s = self.opened.wait(s).unwrap_or_else(|e| e.into_inner()),
                State::Open(v) => return Some(v.clone()),
                State::Aborted => return None,
            }
        }
    }

    /// Building the machine failed: waiters exit without running. A gate
    /// already open stays open.
    pub fn abort(&self) {
        let mut s = self.lock();
        if matches!(*s, State::Closed { .. }) {
            *s = State::Aborted;
        }
        self.opened.notify_all();
    }

    /// Whether the gate has opened.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open(_))
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
