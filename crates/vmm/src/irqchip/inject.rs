//! Getting a user-space PIC's interrupt into vCPU 0, as KVM's API
//! documentation asks: KVM_INTERRUPT only when `kvm_run` says the vCPU is
//! ready for injection and its IF is set; otherwise ask for an
//! interrupt-window exit, and only then (an open window makes KVM_RUN
//! return at once). And the vCPU's halted state, which is Tsubame's once
//! KVM has no irqchip: a halted vCPU waits in user space until an
//! interrupt is pending or someone wakes it.

use std::sync::Arc;

use super::UserChip;
use crate::vcpu::handle::{Wakeup, WakeupRegistration};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject,
    RequestWindow,
    Nothing,
}

/// What to do before KVM_RUN, from the PIC's INT line and `kvm_run`'s
/// `ready_for_interrupt_injection` and `if_flag`.
pub fn decide(pending: bool, ready: bool, if_flag: bool) -> Decision {
    match (pending, ready && if_flag) {
        (false, _) => Decision::Nothing,
        (true, true) => Decision::Inject,
        (true, false) => Decision::RequestWindow,
    }
}

/// vCPU 0's side of a user-space irqchip.
pub struct Injector {
    pub chip: Arc<UserChip>,
    wakeup: Arc<Wakeup>,
    /// The guest executed HLT and no interrupt has woken it yet.
    pub halted: bool,
    _registration: WakeupRegistration,
}

/// What the vCPU loop should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeRun {
    /// Stay halted: it waited for a wake; look at requests and ask again.
    Halted,
    /// Enter the guest, injecting this vector first if any, and asking
    /// for the interrupt window or not.
    Run { vector: Option<u8>, window: bool },
}

impl Injector {
    /// Registers the calling thread (vCPU 0) as the one the chip kicks.
    pub fn new(chip: Arc<UserChip>, wakeup: Arc<Wakeup>) -> Injector {
        Injector {
            _registration: wakeup.register(),
            chip,
            wakeup,
            halted: false,
        }
    }

    /// The step before KVM_RUN (`ready`, `if_flag` from `kvm_run`).
    pub fn before_run(&mut self, ready: bool, if_flag: bool) -> BeforeRun {
        let pending = self.chip.pending();
        if self.halted {
            if !pending {
                self.wakeup.wait();
                return BeforeRun::Halted;
            }
            self.halted = false;
        }
        match decide(pending, ready, if_flag) {
            Decision::Inject => BeforeRun::Run {
                vector: Some(self.chip.acknowledge()),
                window: false,
            },
            Decision::RequestWindow => BeforeRun::Run {
                vector: None,
                window: true,
            },
            Decision::Nothing => BeforeRun::Run {
                vector: None,
                window: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_first_and_ask_for_the_window_only_when_it_cannot() {
        assert_eq!(decide(false, true, true), Decision::Nothing);
        assert_eq!(decide(false, false, false), Decision::Nothing);
        assert_eq!(decide(true, true, true), Decision::Inject);
        assert_eq!(decide(true, true, false), Decision::RequestWindow);
        assert_eq!(decide(true, false, true), Decision::RequestWindow);
        assert_eq!(decide(true, false, false), Decision::RequestWindow);
    }

    fn chip_with_irq0_unmasked() -> (Arc<UserChip>, Arc<Wakeup>) {
        let wakeup = Arc::new(Wakeup::default());
        let chip = UserChip::new(wakeup.clone());
        chip.with(false, |st, _| {
            st.pic.write(0, false, 0x13); // single, edge, ICW4
            st.pic.write(0, true, 0x30);
            st.pic.write(0, true, 0x01);
            st.pic.write(0, true, 0xfe);
        });
        (chip, wakeup)
    }

    #[test]
    fn a_halted_vcpu_waits_until_an_interrupt_wakes_it() {
        // The pulse below kicks this thread, as it would a vCPU.
        crate::vcpu::install_kick_handler().unwrap();
        let (chip, wakeup) = chip_with_irq0_unmasked();
        let mut inj = Injector::new(chip.clone(), wakeup.clone());
        assert_eq!(
            inj.before_run(true, true),
            BeforeRun::Run {
                vector: None,
                window: false
            }
        );
        inj.halted = true;
        // A stray wake (a request): it waits once, stays halted.
        wakeup.notify();
        assert_eq!(inj.before_run(true, true), BeforeRun::Halted);
        let c = chip.clone();
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            c.pulse(0);
        });
        assert_eq!(inj.before_run(true, true), BeforeRun::Halted, "woken");
        raiser.join().unwrap();
        assert_eq!(
            inj.before_run(true, true),
            BeforeRun::Run {
                vector: Some(0x30),
                window: false
            }
        );
        assert!(!inj.halted);
        // IF clear: the window, and the vector stays pending.
        chip.with(false, |st, _| st.pic.write(0, false, 0x20));
        chip.pulse(0);
        assert_eq!(
            inj.before_run(true, false),
            BeforeRun::Run {
                vector: None,
                window: true
            }
        );
        assert!(chip.pending());
    }
}
