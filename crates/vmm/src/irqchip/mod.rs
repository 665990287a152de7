//! How a device's interrupt reaches the guest: the interrupt controllers
//! and the timer. Devices only raise a line ([`crate::devices::IrqLine`]);
//! the mode decides the rest.
//!
//! - `kernel`: KVM's PIC, IOAPIC, LAPICs and PIT; each line is an irqfd.
//! - `userspace`: no irqchip in KVM. Tsubame's 8259A pair ([`pic`]) and
//!   8254 ([`pit`]) in a [`UserChip`], on the port bus ([`ports`]); the
//!   PIT's interrupts come from a timerfd that the main loop watches
//!   ([`timer`]), and everything reaches vCPU 0 through KVM_INTERRUPT
//!   ([`inject`]).
//! - `split`: the LAPICs in KVM, the IOAPIC in Tsubame ([`ioapic`]), whose
//!   entries become MSI routes for the devices' irqfds; the PIC and PIT as
//!   in `userspace`, the PIC's ExtINT to vCPU 0, the PIT also on pin 2.

pub mod inject;
pub mod ioapic;
pub mod pic;
pub mod pit;
pub mod ports;
pub mod state;
pub mod timer;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::vcpu::handle::Wakeup;

/// Where the interrupt controllers live (`--irqchip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqchipMode {
    #[default]
    Kernel,
    Split,
    Userspace,
}

impl IrqchipMode {
    pub const NAMES: &'static str = "kernel, split, userspace";

    /// KVM's whole irqchip (PIC, IOAPIC, PIT too).
    pub fn in_kernel(self) -> bool {
        self == IrqchipMode::Kernel
    }

    /// The LAPICs are KVM's (`kernel`, `split`).
    pub fn lapic_in_kernel(self) -> bool {
        self != IrqchipMode::Userspace
    }

    pub fn name(self) -> &'static str {
        match self {
            IrqchipMode::Kernel => "kernel",
            IrqchipMode::Split => "split",
            IrqchipMode::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for IrqchipMode {
    type Err = String;

    fn from_str(s: &str) -> Result<IrqchipMode, String> {
        match s {
            "kernel" => Ok(IrqchipMode::Kernel),
            "split" => Ok(IrqchipMode::Split),
            "userspace" => Ok(IrqchipMode::Userspace),
            other => Err(format!(
                "unknown irqchip mode '{other}' (expected one of: {})",
                IrqchipMode::NAMES
            )),
        }
    }
}

/// The PIC pair and the PIT, with the moment their clock started.
pub struct ChipState {
    pub pic: pic::PicPair,
    pub pit: pit::Pit,
    /// vCPU 0 was woken for the interrupt now pending and has not looked
    /// since: another wake would only cost it an exit.
    woken: bool,
    /// The PIT's last edge delivered (or when the timer started), on the
    /// chip's clock.
    last_edge: u64,
    /// Fires at the PIT's next edge ([`timer`]); `None` until started.
    timer: Option<vmm_sys_util::timerfd::TimerFd>,
}

/// Tsubame's interrupt controller and timer, shared by vCPU 0 (ports,
/// injection), the devices (lines) and the main loop (the timer).
pub struct UserChip {
    state: Mutex<ChipState>,
    epoch: Instant,
    /// Added to the time since `epoch`: a restored chip's clock goes on
    /// from its snapshot's.
    clock_offset_ns: AtomicI64,
    vcpu0: Arc<Wakeup>,
    /// `split`: the PIT's IRQ 0 also reaches IOAPIC pin 2.
    ioapic: std::sync::OnceLock<Arc<ioapic::IoApic>>,
}

impl UserChip {
    pub fn new(vcpu0: Arc<Wakeup>) -> Arc<UserChip> {
        Arc::new(UserChip {
            state: Mutex::new(ChipState {
                pic: pic::PicPair::default(),
                pit: pit::Pit::default(),
                woken: false,
                last_edge: 0,
                timer: None,
            }),
            epoch: Instant::now(),
            clock_offset_ns: AtomicI64::new(0),
            vcpu0,
            ioapic: std::sync::OnceLock::new(),
        })
    }

    /// Wires the PIT's output to `ioapic`'s pin 2 as well (`split`).
    pub fn attach_ioapic(&self, ioapic: Arc<ioapic::IoApic>) {
        let _ = self.ioapic.set(ioapic);
    }

    /// The PIT's edge: IRQ 0 on the PIC, and pin 2 of the IOAPIC if any.
    fn timer_edge(&self, st: &mut ChipState) {
        st.pic.pulse(0);
        self.signal(st);
        if let Some(io) = self.ioapic.get() {
            io.pulse(2);
        }
    }

    /// The chip's clock, ns.
    pub fn now(&self) -> u64 {
        let since = self.epoch.elapsed().as_nanos() as i64;
        since
            .saturating_add(self.clock_offset_ns.load(Ordering::Relaxed))
            .max(0) as u64
    }

    fn lock(&self) -> MutexGuard<'_, ChipState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the chip at time `now`; then sets the timer again if
    /// `pit_changed`, and wakes vCPU 0 if an interrupt became pending.
    pub fn with<R>(&self, pit_changed: bool, f: impl FnOnce(&mut ChipState, u64) -> R) -> R {
        let mut st = self.lock();
        let now = self.now();
        let r = f(&mut st, now);
        if pit_changed {
            self.run_timer(&mut st, now);
        }
        self.signal(&mut st);
        r
    }

    fn signal(&self, st: &mut ChipState) {
        if !st.woken && st.pic.interrupt() {
            st.woken = true;
            self.vcpu0.wake();
        }
    }

    /// A device's edge on input `pin`.
    pub fn pulse(&self, pin: u8) {
        self.with(false, |st, _| st.pic.pulse(pin));
    }

    /// Whether the PIC asserts INT; vCPU 0 asks before each KVM_RUN.
    pub fn pending(&self) -> bool {
        let mut st = self.lock();
        st.woken = false;
        st.pic.interrupt()
    }

    /// The INTA cycle: the vector to inject.
    pub fn acknowledge(&self) -> u8 {
        self.with(false, |st, _| st.pic.acknowledge())
    }
}

impl crate::devices::InterruptSink for UserChip {
    fn pulse(&self, pin: u32) {
        if let Ok(pin) = u8::try_from(pin) {
            UserChip::pulse(self, pin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_themselves() {
        for m in [
            IrqchipMode::Kernel,
            IrqchipMode::Split,
            IrqchipMode::Userspace,
        ] {
            assert_eq!(m.name().parse::<IrqchipMode>(), Ok(m));
        }
        let e = "split2".parse::<IrqchipMode>().unwrap_err();
        assert!(e.contains("split2") && e.contains("userspace"), "{e}");
        assert!(IrqchipMode::default().in_kernel());
    }

    #[test]
    fn a_pulse_wakes_vcpu0_once_until_it_looks() {
        let wakeup = Arc::new(Wakeup::default());
        let chip = UserChip::new(wakeup.clone());
        chip.with(false, |st, _| {
            for (c, base) in [(0, 0x20), (1, 0x28)] {
                st.pic.write(c, false, 0x11);
                st.pic.write(c, true, base);
                st.pic.write(c, true, 4 >> c);
                st.pic.write(c, true, 1);
                st.pic.write(c, true, 0);
            }
        });
        assert!(!chip.lock().woken);
        chip.pulse(4);
        assert!(chip.lock().woken);
        wakeup.wait(); // returns: the wake was recorded
        chip.pulse(3);
        assert!(chip.pending());
        assert!(!chip.lock().woken, "looking clears it");
        assert_eq!(chip.acknowledge(), 0x23);
        assert_eq!(chip.acknowledge(), 0x27, "IRQ4 waits behind IRQ3: spurious");
        chip.with(false, |st, _| st.pic.write(0, false, 0x20)); // EOI
        assert_eq!(chip.acknowledge(), 0x24);
        assert!(!chip.pending());
    }
}
