//! Gates the vCPU threads pass before their first KVM_RUN: the CPU plan's
//! (opened when the plan is ready) and the start gate between "vCPU
//! created" and "first KVM_RUN", which opens when the machine is complete
//! (the builder hands over what the vCPUs run with) and every vCPU has
//! arrived prepared, whichever comes last; the party that completes it
//! goes straight on. The builder used to
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

/// A barrier that hands every waiter the same `T` once opened, or `None`
/// if aborted; with `arrivals`, it opens only once that many have
/// arrived too.
pub struct Gate<T> {
    vcpus: usize,
    state: Mutex<State<T>>,
    opened: Condvar,
}

/// The start gate.
pub type StartGate = Gate<MachineReady>;

impl<T> Default for Gate<T> {
    /// A gate that opens with its value alone.
    fn default() -> Self {
        Gate::new(0)
    }
}

impl<T> Gate<T> {
    /// A gate that also waits for `vcpus` arrivals.
    pub fn new(vcpus: usize) -> Gate<T> {
        Gate {
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
                if self.vcpus > 0 {
                    crate::trace::mark("start gate opened");
                }
            }
        }
    }

    /// The value is ready (the machine is complete): the gate opens now
    /// if every vCPU has arrived, else when the last one does. Ignored
    /// once aborted.
    pub fn open(&self, value: Arc<T>) {
        let mut s = self.lock();
        if let State::Closed { ready, .. } = &mut *s {
            *ready = Some(value);
        }
        self.open_if_complete(&mut s);
    }

    /// Waits for the gate to open, without counting as an arrival.
    pub fn wait(&self) -> Option<Arc<T>> {
        let s = self.lock();
        self.wait_open(s)
    }

    /// A prepared vCPU arrives and waits for the gate to open: what the
    /// machine runs with, or `None` if building it failed (aborted).
    pub fn arrive_and_wait(&self) -> Option<Arc<T>> {
        let mut s = self.lock();
        if let State::Closed { arrived, .. } = &mut *s {
            *arrived += 1;
        }
        self.open_if_complete(&mut s);
        self.wait_open(s)
    }

    fn wait_open(&self, mut s: std::sync::MutexGuard<'_, State<T>>) -> Option<Arc<T>> {
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
