//! The boot GDT: flat segments for whichever mode the kernel is entered in,
//! and the matching `kvm_segment`s for KVM_SET_SREGS (which must agree with
//! the descriptors, or the first segment load in the guest changes them).

use kvm_bindings::kvm_segment;

/// Selectors Linux's boot protocol expects: __BOOT_CS and __BOOT_DS.
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Descriptor access/flag bits, packed as in Intel SDM Vol. 3 §3.4.5:
/// `flags` holds bits 55..52 (G, D/B, L, AVL) in its high nibble and the
/// access byte (P, DPL, S, type) in its low byte.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// 64-bit code: G, L, present, code execute/read, accessed.
pub const CODE64: u64 = descriptor(0xa09b, 0, 0xfffff);
/// 32-bit code: G, D, present, code execute/read, accessed.
pub const CODE32: u64 = descriptor(0xc09b, 0, 0xfffff);
/// Flat data: G, B, present, data read/write, accessed.
pub const DATA: u64 = descriptor(0xc093, 0, 0xfffff);
/// A busy 32/64-bit TSS; KVM needs a usable TR even if the guest never
/// switches tasks.
pub const TSS: u64 = descriptor(0x808b, 0, 0xfffff);

/// The GDT for an entry in long mode (64-bit boot protocol).
pub fn long_mode() -> [u64; 5] {
    [0, 0, CODE64, DATA, TSS]
}

/// The GDT for an entry in 32-bit protected mode (PVH).
pub fn protected_mode() -> [u64; 5] {
    [0, 0, CODE32, DATA, TSS]
}

/// Decodes descriptor `gdt[index]` into the segment KVM should load.
pub fn segment(gdt: &[u64], index: u16) -> kvm_segment {
    let d = gdt[index as usize];
    let limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    let g = ((d >> 55) & 1) as u8;
    kvm_segment {
        base: ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000),
        // KVM wants the limit in bytes.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g,
        avl: ((d >> 52) & 1) as u8,
        unusable: if (d >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(CODE32, 0x00cf_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
        assert_eq!(TSS, 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_decode_the_descriptors() {
        let gdt = long_mode();
        let cs = segment(&gdt, CODE_SELECTOR / 8);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = segment(&gdt, DATA_SELECTOR / 8);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        let tr = segment(&gdt, TSS_SELECTOR / 8);
        assert_eq!((tr.s, tr.type_), (0, 0xb));
        let cs32 = segment(&protected_mode(), CODE_SELECTOR / 8);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let null = segment(&gdt, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let d = descriptor(0x4093, 0x1234_5678, 0xabcde);
        let s = segment(&[d], 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }
}
