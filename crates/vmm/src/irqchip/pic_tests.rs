use super::*;

/// Linux's initialisation: ICW1 (edge, cascade, ICW4), vectors 0x20 and
/// 0x28, the cascade on IRQ2, 8086 mode; then `mask` on each chip.
fn linux_pair(auto_eoi: bool, masks: [u8; 2]) -> PicPair {
    let mut p = PicPair::default();
    let icw4 = if auto_eoi { 0x03 } else { 0x01 };
    for (chip, (base, icw3)) in [(0x20, 0x04), (0x28, 0x02)].into_iter().enumerate() {
        p.write(chip, false, 0x11);
        p.write(chip, true, base);
        p.write(chip, true, icw3);
        p.write(chip, true, icw4);
        p.write(chip, true, masks[chip]);
    }
    p
}

const NON_SPECIFIC_EOI: u8 = 0x20;

#[test]
fn before_initialisation_every_input_is_masked() {
    let mut p = PicPair::default();
    p.pulse(5);
    assert!(!p.interrupt());
    p.write(0, false, 0x11);
    assert_eq!(p.chips[0].imr, 0, "ICW1 clears the mask");
}

#[test]
fn initialisation_sets_vectors_and_leaves_every_input_masked_as_written() {
    let mut p = linux_pair(false, [0xff, 0xff]);
    assert_eq!(p.chips[0].base, 0x20);
    assert_eq!(p.chips[1].base, 0x28);
    assert_eq!((p.chips[0].init_step, p.chips[1].init_step), (0, 0));
    assert_eq!(p.read(0, true), 0xff, "OCW1 reads back");
    p.pulse(3);
    assert!(!p.interrupt(), "masked");
    assert_eq!(p.read(0, false), 0x08, "IRR holds the masked request");
    p.write(0, true, 0xf7);
    assert!(p.interrupt(), "unmasking delivers the held request");
    assert_eq!(p.acknowledge(), 0x23);
}

#[test]
fn a_single_chip_without_icw4_skips_icw3_and_icw4() {
    let mut p = PicPair::default();
    p.write(0, false, 0x12); // ICW1: single, no ICW4
    p.write(0, true, 0x40);
    assert_eq!(p.chips[0].init_step, 0);
    p.write(0, true, 0xfe);
    assert_eq!(p.chips[0].imr, 0xfe, "the next data write is OCW1");
}

#[test]
fn lower_inputs_win_and_an_input_in_service_blocks_lower_priorities() {
    let mut p = linux_pair(false, [0, 0]);
    p.pulse(5);
    p.pulse(3);
    assert_eq!(p.acknowledge(), 0x23);
    assert!(!p.interrupt(), "IRQ5 waits behind IRQ3 in service");
    p.pulse(1);
    assert!(p.interrupt(), "a higher priority nests");
    assert_eq!(p.acknowledge(), 0x21);
    assert_eq!(p.read(0, false), 0x20, "IRR: only IRQ5 left");
    p.write(0, false, 0x0b); // OCW3: read ISR
    assert_eq!(p.read(0, false), 0x0a, "ISR: IRQ1 and IRQ3");
    p.write(0, false, NON_SPECIFIC_EOI);
    assert_eq!(p.read(0, false), 0x08, "non-specific EOI ends the highest");
    assert!(!p.interrupt());
    p.write(0, false, 0x63); // specific EOI, level 3
    assert_eq!(p.read(0, false), 0);
    assert_eq!(p.acknowledge(), 0x25);
}

#[test]
fn rotation_makes_the_serviced_input_the_lowest() {
    let mut p = linux_pair(false, [0, 0]);
    p.pulse(1);
    assert_eq!(p.acknowledge(), 0x21);
    p.write(0, false, 0xa0); // rotate on non-specific EOI
    p.pulse(0);
    p.pulse(3);
    assert_eq!(p.acknowledge(), 0x23, "IRQ1 is now lowest: 2,3,...,0,1");
    p.write(0, false, 0xe3); // rotate on specific EOI 3
    assert_eq!(
        p.acknowledge(),
        0x20,
        "IRQ3 is now lowest: IRQ0 comes first"
    );
    // Set priority: IRQ5 lowest, so IRQ6 highest.
    p.write(0, false, NON_SPECIFIC_EOI);
    p.write(0, false, 0xc5);
    p.pulse(7);
    p.pulse(6);
    p.pulse(2);
    assert_eq!(p.acknowledge(), 0x26);
}

#[test]
fn auto_eoi_puts_nothing_in_service_and_can_rotate() {
    let mut p = linux_pair(true, [0, 0]);
    p.pulse(4);
    assert_eq!(p.acknowledge(), 0x24);
    assert_eq!(p.chips[0].isr, 0);
    p.write(0, false, 0x80); // rotate in auto-EOI mode
    p.pulse(4);
    p.pulse(6);
    assert_eq!(p.acknowledge(), 0x24);
    assert_eq!(p.chips[0].priority_add, 5);
    p.pulse(2);
    p.pulse(6);
    assert_eq!(p.acknowledge(), 0x26, "IRQ4 lowest: 5,6,7,0,...");
}

#[test]
fn slave_inputs_cascade_through_irq2() {
    let mut p = linux_pair(false, [0xfb, 0xfb]); // IRQ2 and IRQ10 unmasked
    p.pulse(10);
    assert!(p.interrupt());
    assert_eq!(p.acknowledge(), 0x2a);
    assert_eq!((p.chips[0].isr, p.chips[1].isr), (0x04, 0x04));
    p.pulse(10);
    assert!(!p.interrupt(), "in service on both chips");
    p.write(1, false, NON_SPECIFIC_EOI);
    assert!(
        !p.interrupt(),
        "fully nested: the master's IRQ2 still in service blocks the slave"
    );
    p.write(0, false, NON_SPECIFIC_EOI);
    assert!(p.interrupt());
    assert_eq!(p.acknowledge(), 0x2a);
}

#[test]
fn special_fully_nested_lets_a_higher_slave_input_through() {
    let mut p = PicPair::default();
    for (chip, base) in [(0, 0x20), (1, 0x28)] {
        p.write(chip, false, 0x11);
        p.write(chip, true, base);
        p.write(chip, true, 0);
        p.write(chip, true, if chip == 0 { 0x11 } else { 0x01 });
        p.write(chip, true, 0);
    }
    p.pulse(12);
    assert_eq!(p.acknowledge(), 0x2c);
    p.pulse(9);
    assert!(p.interrupt(), "IRQ9 outranks IRQ12 on the slave");
    assert_eq!(p.acknowledge(), 0x29);
}

#[test]
fn a_request_gone_before_its_acknowledge_is_spurious() {
    let mut p = linux_pair(false, [0, 0]);
    p.write_elcr(0, 0x20); // IRQ5 level-triggered
    p.set_irq(5, true);
    assert!(p.interrupt());
    p.set_irq(5, false);
    assert_eq!(p.acknowledge(), 0x27, "spurious IRQ7");
    assert_eq!(p.chips[0].isr, 0, "nothing in service");
    // On the slave: the master sees IRQ2, the slave has nothing: 15.
    p.write_elcr(1, 0x08); // IRQ11 level
    p.set_irq(11, true);
    p.set_irq(11, false);
    assert!(p.interrupt(), "the master latched the cascade's edge");
    assert_eq!(p.acknowledge(), 0x2f, "spurious IRQ15");
    assert_eq!(p.chips[1].isr, 0);
}

#[test]
fn level_inputs_stay_requested_while_asserted_and_edges_need_a_new_edge() {
    let mut p = linux_pair(false, [0, 0]);
    p.write_elcr(0, 0x08);
    assert_eq!(p.read_elcr(0), 0x08);
    p.write_elcr(0, 0xff);
    assert_eq!(p.read_elcr(0), 0xf8, "IRQ0-2 are always edge");
    p.write_elcr(0, 0x08);
    p.set_irq(3, true);
    assert_eq!(p.acknowledge(), 0x23);
    p.write(0, false, NON_SPECIFIC_EOI);
    assert!(p.interrupt(), "still asserted: requested again after EOI");
    assert_eq!(p.acknowledge(), 0x23);
    p.set_irq(3, false);
    p.write(0, false, NON_SPECIFIC_EOI);
    assert!(!p.interrupt());
    // Edge: holding the line high does not re-request.
    p.set_irq(4, true);
    assert_eq!(p.acknowledge(), 0x24);
    p.write(0, false, NON_SPECIFIC_EOI);
    p.set_irq(4, true);
    assert!(!p.interrupt(), "no new edge");
    p.set_irq(4, false);
    p.set_irq(4, true);
    assert!(p.interrupt());
}

#[test]
fn poll_mode_acknowledges_on_the_command_port_read() {
    let mut p = linux_pair(false, [0, 0]);
    p.write(0, false, 0x0c); // OCW3 poll
    assert_eq!(p.read(0, false), 0, "nothing pending");
    p.pulse(6);
    p.write(0, false, 0x0c);
    assert_eq!(p.read(0, false), 0x86);
    assert_eq!(p.chips[0].isr, 0x40, "polled means acknowledged");
    assert!(!p.chips[0].poll, "one read only");
}

#[test]
fn special_mask_lets_lower_priorities_through_a_masked_service() {
    let mut p = linux_pair(false, [0, 0]);
    p.pulse(1);
    assert_eq!(p.acknowledge(), 0x21);
    p.write(0, true, 0x02); // mask IRQ1 while it is in service
    p.write(0, false, 0x68); // OCW3: set special mask
    p.pulse(5);
    assert!(p.interrupt(), "IRQ1 in service but masked no longer blocks");
    assert_eq!(p.acknowledge(), 0x25);
}

#[test]
fn icw1_reinitialises_but_keeps_elcr_and_asserted_level_inputs() {
    let mut p = linux_pair(false, [0, 0]);
    p.write_elcr(0, 0x08);
    p.set_irq(3, true);
    p.pulse(4);
    p.write(0, false, 0x11);
    assert_eq!(p.chips[0].irr, 0x08);
    assert_eq!(p.chips[0].elcr, 0x08);
    assert_eq!(p.chips[0].imr, 0);
    assert_eq!(p.chips[0].init_step, 1);
    p.set_irq(99, true); // out of range: ignored
}
