use std::sync::Arc;

use super::*;
use crate::vcpu::handle::Wakeup;

fn chip() -> Arc<UserChip> {
    UserChip::new(Arc::new(Wakeup::default()))
}

/// Channel 0 in mode 2 with count 0x1234, the master PIC initialised.
fn programmed() -> Arc<UserChip> {
    let c = chip();
    c.with(true, |st, now| {
        st.pic.write(0, false, 0x11);
        st.pic.write(0, true, 0x20);
        st.pic.write(0, true, 0x04);
        st.pic.write(0, true, 0x01);
        st.pic.write(0, true, 0xfe);
        st.pit.write(3, 0x34, now);
        st.pit.write(0, 0x34, now);
        st.pit.write(0, 0x12, now);
    });
    c
}

#[test]
fn a_restored_chip_goes_on_from_the_saved_clock() {
    let a = programmed();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let saved = a.save();
    assert!(saved.clock_ns >= 5_000_000);
    // The same counter at the same chip time, in a chip whose own clock
    // began later.
    let b = chip();
    b.restore(&saved).unwrap();
    assert!(b.now() >= saved.clock_ns, "the clock does not go back");
    assert!(b.now() < saved.clock_ns + 1_000_000_000);
    let at = saved.clock_ns;
    let mut pa = saved.pit.clone();
    let mut pb = b.save().pit;
    pa.write(3, 0x00, at); // latch channel 0
    pb.write(3, 0x00, at);
    assert_eq!(
        (pa.read(0, at), pa.read(0, at)),
        (pb.read(0, at), pb.read(0, at))
    );
    assert_eq!(b.save().pic, saved.pic);
    // The next edge is no further away than one period.
    let next = b.lock().pit.next_irq0(b.now()).unwrap();
    assert!(next - b.now() <= 0x1234 * 1_000_000_000 / pit::FREQ + 1);
}

type Spoil = Box<dyn Fn(&mut UserChipState)>;

#[test]
fn states_no_chip_could_have_made_are_refused() {
    let good = programmed().save();
    let cases: Vec<(&str, Spoil)> = vec![
        ("count 0", Box::new(|s| s.pit.channels[0].count = 0)),
        ("mode 7", Box::new(|s| s.pit.channels[1].mode = 7)),
        ("access mode 0", Box::new(|s| s.pit.channels[2].access = 0)),
        (
            "after the snapshot",
            Box::new(|s| s.pit.channels[0].loaded_at = Some(s.clock_ns + 1)),
        ),
        (
            "more than two bytes",
            Box::new(|s| s.pit.channels[0].latch = Some((1, 3))),
        ),
        ("priority 8", Box::new(|s| s.pic.chips[1].priority_add = 8)),
        ("init step 4", Box::new(|s| s.pic.chips[0].init_step = 4)),
        ("clock out of range", Box::new(|s| s.clock_ns = u64::MAX)),
    ];
    for (want, spoil) in cases {
        let mut s = good.clone();
        spoil(&mut s);
        let c = chip();
        let e = c.restore(&s).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(c.save().pit, pit::Pit::default(), "{want}: nothing taken");
    }
    chip().restore(&good).unwrap();
}
