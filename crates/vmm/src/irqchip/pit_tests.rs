use super::*;

/// ns at which `ticks` input clocks have passed.
fn at(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(FREQ)) as u64
}

/// Control word for `channel`, word access, `mode`, binary.
fn program(pit: &mut Pit, channel: u8, mode: u8, count: u16, now: u64) {
    pit.write(3, channel << 6 | 0x30 | mode << 1, now);
    pit.write(usize::from(channel), count as u8, now);
    pit.write(usize::from(channel), (count >> 8) as u8, now);
}

fn read_word(pit: &mut Pit, channel: usize, now: u64) -> u16 {
    let lo = pit.read(channel, now);
    let hi = pit.read(channel, now);
    u16::from(hi) << 8 | u16::from(lo)
}

#[test]
fn mode0_counts_down_and_raises_out_at_terminal_count() {
    let mut pit = Pit::default();
    pit.write(3, 0x30, 0);
    assert!(
        !pit.channels[0].out(0),
        "mode 0: OUT low after the control word"
    );
    program(&mut pit, 0, 0, 1000, 0);
    assert_eq!(read_word(&mut pit, 0, at(0)), 1000);
    assert_eq!(read_word(&mut pit, 0, at(300)), 700);
    assert!(!pit.channels[0].out(at(999)));
    assert!(pit.channels[0].out(at(1000)));
    assert_eq!(pit.next_irq0(0), Some(at(1000)));
    assert_eq!(pit.next_irq0(at(1000)), None, "one shot");
    // It keeps counting down past zero, wrapping.
    assert_eq!(read_word(&mut pit, 0, at(1001)), 0xffff);
}

#[test]
fn mode2_is_a_rate_generator_low_for_one_clock_per_period() {
    let mut pit = Pit::default();
    program(&mut pit, 0, 2, 100, 0);
    let c = &pit.channels[0];
    assert!(c.out(at(0)) && c.out(at(98)));
    assert!(!c.out(at(99)), "low while the count is 1");
    assert!(c.out(at(100)) && c.out(at(150)));
    assert!(!c.out(at(199)));
    assert_eq!(pit.next_irq0(0), Some(at(100)));
    assert_eq!(pit.next_irq0(at(100)), Some(at(200)));
    assert_eq!(pit.next_irq0(at(250)), Some(at(300)));
    assert_eq!(read_word(&mut pit, 0, at(130)), 70);
}

#[test]
fn mode3_is_a_square_wave_counting_by_two() {
    let mut pit = Pit::default();
    program(&mut pit, 0, 3, 100, 0);
    let c = &pit.channels[0];
    assert!(c.out(at(0)) && c.out(at(49)));
    assert!(!c.out(at(50)) && !c.out(at(99)));
    assert!(c.out(at(100)));
    assert_eq!(read_word(&mut pit, 0, at(10)), 80);
    // An odd count: high one clock longer than low.
    program(&mut pit, 0, 3, 5, 0);
    let waveform: Vec<bool> = (0..5).map(|t| pit.channels[0].out(at(t))).collect();
    assert_eq!(waveform, [true, true, true, false, false]);
    assert_eq!(pit.next_irq0(at(3)), Some(at(5)));
    // Modes 6 and 7 are 2 and 3.
    pit.write(3, 0x3e, 0);
    assert_eq!(pit.channels[0].mode, 3);
}

#[test]
fn mode4_strobes_once_and_mode1_and_5_wait_for_the_gate() {
    let mut pit = Pit::default();
    program(&mut pit, 0, 4, 10, 0);
    let c = &pit.channels[0];
    assert!(c.out(at(9)) && !c.out(at(10)) && c.out(at(11)));
    assert_eq!(pit.next_irq0(0), Some(at(11)));
    assert_eq!(pit.next_irq0(at(11)), None);

    // Channel 2, gate low: mode 1 waits for a rising gate.
    program(&mut pit, 2, 1, 10, 0);
    assert!(pit.channels[2].out(at(50)), "not triggered: OUT high");
    assert_eq!(read_word(&mut pit, 2, at(50)), 10);
    let t = at(100);
    pit.write_port61(1, t);
    assert!(
        !pit.channels[2].out(t + at(5)),
        "triggered: low while counting"
    );
    assert!(pit.channels[2].out(t + at(10)));
    assert_eq!(read_word(&mut pit, 2, t + at(4)), 6);
    // Retriggering restarts the count.
    pit.write_port61(0, t + at(100));
    let t = t + at(200);
    pit.write_port61(1, t);
    assert!(!pit.channels[2].out(t + at(5)));
    assert!(pit.channels[2].out(t + at(10)));

    pit.write_port61(0, 0);
    program(&mut pit, 2, 5, 10, 0);
    let t = at(20);
    pit.write_port61(1, t);
    let c = &pit.channels[2];
    assert!(c.out(t + at(9)) && !c.out(t + at(10)) && c.out(t + at(11)));
}

#[test]
fn a_latched_count_holds_while_time_passes() {
    let mut pit = Pit::default();
    program(&mut pit, 0, 2, 1000, 0);
    pit.write(3, 0x00, at(100)); // latch channel 0
    assert_eq!(read_word(&mut pit, 0, at(500)), 900);
    assert_eq!(
        read_word(&mut pit, 0, at(500)),
        500,
        "the latch is read once"
    );
    // A second latch before the first is read does not replace it.
    pit.write(3, 0x00, at(600));
    pit.write(3, 0x00, at(700));
    assert_eq!(read_word(&mut pit, 0, at(800)), 400);
    // LSB-only access: one byte latched.
    pit.write(3, 0x14, 0); // channel 0, LSB, mode 2
    pit.write(0, 200, 0);
    pit.write(3, 0x00, at(50));
    assert_eq!(pit.read(0, at(90)), 150);
    assert_eq!(pit.read(0, at(90)), 110, "then live values");
}

#[test]
fn read_back_latches_status_and_count() {
    let mut pit = Pit::default();
    pit.write(3, 0xb4, 0); // channel 2, word, mode 2, binary
    let status = |pit: &mut Pit, now| {
        pit.write(3, 0xe8, now); // read-back status of channel 2
        pit.read(2, now)
    };
    assert_eq!(status(&mut pit, 0), 0x80 | 0x40 | 0x30 | 0x04, "null count");
    pit.write(2, 0x00, 0);
    pit.write(2, 0x10, 0);
    assert_eq!(
        status(&mut pit, 0),
        0x80 | 0x30 | 0x04,
        "OUT high, count loaded"
    );
    // Count and status both: status first, then the count.
    pit.write_port61(1, 0);
    pit.write(3, 0xc8, at(16)); // read-back count and status, channel 2
    assert_eq!(pit.read(2, at(100)), 0xb4);
    assert_eq!(read_word(&mut pit, 2, at(100)), 0x1000 - 16);
}

#[test]
fn bcd_counts_in_decimal() {
    let mut pit = Pit::default();
    pit.write(3, 0x31, 0); // channel 0, word, mode 0, BCD
    pit.write(0, 0x34, 0);
    pit.write(0, 0x12, 0);
    assert_eq!(pit.channels[0].count, 1234);
    assert_eq!(read_word(&mut pit, 0, at(35)), 0x1199);
    assert_eq!(pit.next_irq0(0), Some(at(1234)));
    assert_eq!(read_word(&mut pit, 0, at(1235)), 0x9999, "wraps at 10000");
}

#[test]
fn gate_low_holds_mode0_and_port61_shows_out2() {
    let mut pit = Pit::default();
    pit.write_port61(1, 0);
    program(&mut pit, 2, 0, 100, 0);
    assert_eq!(pit.read_port61(at(10)) & 0x21, 0x01, "gate on, OUT2 low");
    pit.write_port61(0, at(40));
    assert_eq!(read_word(&mut pit, 2, at(90)), 60, "held at 60");
    let t = at(1000);
    pit.write_port61(1, t);
    assert_eq!(read_word(&mut pit, 2, t + at(30)), 30);
    assert_eq!(pit.read_port61(t + at(59)) & 0x20, 0, "not yet");
    assert_eq!(pit.read_port61(t + at(60)) & 0x20, 0x20, "terminal count");
    pit.write_port61(0x03, t + at(60));
    assert!(pit.speaker_data);
}

/// Linux's `pit_calibrate_tsc`: gate on, speaker off, channel 2 mode 0 with
/// 0xffff, then wait for OUT2 on port 0x61: ~54.9 ms of host time.
#[test]
fn linux_tsc_calibration_sees_the_terminal_count_at_the_right_time() {
    let mut pit = Pit::default();
    let t0 = 5_000_000;
    let v = pit.read_port61(t0);
    pit.write_port61((v & !0x02) | 0x01, t0);
    pit.write(3, 0xb0, t0);
    pit.write(2, 0xff, t0);
    pit.write(2, 0xff, t0);
    let expected = t0 + at(0xffff);
    assert_eq!(pit.read_port61(expected - 1000) & 0x20, 0);
    assert_eq!(pit.read_port61(expected) & 0x20, 0x20);
    assert!((54_900_000..55_000_000).contains(&(expected - t0)));
}

#[test]
fn a_zero_count_is_the_largest() {
    let mut pit = Pit::default();
    program(&mut pit, 0, 2, 0, 0);
    assert_eq!(pit.channels[0].count, 0x10000);
    assert_eq!(pit.next_irq0(0), Some(at(0x10000)));
    assert_eq!(pit.read(7, 0), 0xff, "no such channel");
    pit.write(9, 0, 0);
}
