use super::*;
use iced_x86::{Decoder, DecoderOptions};
use std::arch::asm;

/// A guest with flat memory at address 0.
struct FakeCpu {
    regs: kvm_regs,
    sregs: kvm_sregs,
    mem: Vec<u8>,
    xcr0: u64,
    fsw: u16,
    mxcsr: u32,
}

impl FakeCpu {
    fn new() -> FakeCpu {
        FakeCpu {
            regs: kvm_regs {
                rip: 0x1000,
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            mem: vec![0; 0x10000],
            xcr0: 0x7,
            fsw: 0,
            mxcsr: 0x1f80,
        }
    }

    fn run(&mut self, bytes: &[u8]) -> Result<Outcome, Error> {
        let insn = Decoder::with_ip(64, bytes, self.regs.rip, DecoderOptions::NONE).decode();
        assert!(!insn.is_invalid());
        complete(&insn, self)
    }
}

impl GuestCpu for FakeCpu {
    fn regs(&mut self) -> &mut kvm_regs {
        &mut self.regs
    }
    fn sregs(&mut self) -> &kvm_sregs {
        &self.sregs
    }
    fn read(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let a = gva as usize;
        let src = self
            .mem
            .get(a..a + buf.len())
            .ok_or(MemFault { gva, write: false })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gva: u64, data: &[u8]) -> Result<(), MemFault> {
        let a = gva as usize;
        let dst = self
            .mem
            .get_mut(a..a + data.len())
            .ok_or(MemFault { gva, write: true })?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn cmpxchg16(
        &mut self,
        gva: u64,
        expected: u128,
        new: u128,
    ) -> Result<Result<(), u128>, MemFault> {
        let mut cur = [0u8; 16];
        self.read(gva, &mut cur)?;
        let cur = u128::from_le_bytes(cur);
        if cur == expected {
            self.write(gva, &new.to_le_bytes())?;
            Ok(Ok(()))
        } else {
            Ok(Err(cur))
        }
    }
    fn xcr0(&mut self) -> u64 {
        self.xcr0
    }
    fn tsc_aux(&mut self) -> (u64, u32) {
        (0x1234_5678_9abc_def0, 0x42)
    }
    fn fpu_status(&mut self) -> u16 {
        self.fsw
    }
    fn mxcsr(&mut self) -> u32 {
        self.mxcsr
    }
    fn set_mxcsr(&mut self, value: u32) {
        self.mxcsr = value;
    }
}

/// `popcnt` and its flags, as the host CPU computes them.
fn host_popcnt(x: u64) -> (u64, u64) {
    let (out, flags): (u64, u64);
    // SAFETY: popcnt reads a register and writes a register and flags.
    unsafe {
        asm!("popcnt {o}, {i}", "pushfq", "pop {f}", o = out(reg) out, i = in(reg) x, f = out(reg) flags);
    }
    (out, flags & RFLAGS_ARITH)
}

#[test]
fn popcnt_matches_the_host() {
    if !std::arch::is_x86_feature_detected!("popcnt") {
        return;
    }
    for x in [
        0u64,
        1,
        0xff,
        0x8000_0000_0000_0001,
        u64::MAX,
        0x1234_5678_9abc_def0,
    ] {
        let mut c = FakeCpu::new();
        c.regs.rbx = x;
        c.regs.rflags |= RFLAGS_CF | RFLAGS_SF;
        // popcnt rax, rbx
        assert_eq!(
            c.run(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]).unwrap(),
            Outcome::Completed
        );
        let (want, flags) = host_popcnt(x);
        assert_eq!(c.regs.rax, want, "{x:#x}");
        assert_eq!(c.regs.rflags & RFLAGS_ARITH, flags, "{x:#x}");
        assert_eq!(c.regs.rip, 0x1005);
    }
}

#[test]
fn popcnt_32bit_from_memory_zero_extends() {
    let mut c = FakeCpu::new();
    c.regs.rax = u64::MAX;
    c.regs.rdi = 0x2000;
    c.mem[0x2000..0x2008].copy_from_slice(&0xffff_ffff_0000_000fu64.to_le_bytes());
    // popcnt eax, dword [rdi]
    c.run(&[0xf3, 0x0f, 0xb8, 0x07]).unwrap();
    assert_eq!(c.regs.rax, 4);
    assert_eq!(c.regs.rip, 0x1004);
}

#[test]
fn crc32_matches_the_host_for_every_width() {
    if !std::arch::is_x86_feature_detected!("sse4.2") {
        return;
    }
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    for (crc, data) in [
        (0u32, 0u64),
        (0xffff_ffff, 0x0123_4567_89ab_cdef),
        (0x1234_5678, 0xdead_beef),
    ] {
        // SAFETY: SSE4.2 is present (checked above).
        let host = unsafe {
            [
                _mm_crc32_u8(crc, data as u8),
                _mm_crc32_u16(crc, data as u16),
                _mm_crc32_u32(crc, data as u32),
                _mm_crc32_u64(u64::from(crc), data) as u32,
            ]
        };
        // crc32 eax, bl / ax, bx (66) / eax, ebx / rax, rbx (REX.W)
        let encodings: [&[u8]; 4] = [
            &[0xf2, 0x0f, 0x38, 0xf0, 0xc3],
            &[0x66, 0xf2, 0x0f, 0x38, 0xf1, 0xc3],
            &[0xf2, 0x0f, 0x38, 0xf1, 0xc3],
            &[0xf2, 0x48, 0x0f, 0x38, 0xf1, 0xc3],
        ];
        for (bytes, want) in encodings.iter().zip(host) {
            let mut c = FakeCpu::new();
            c.regs.rax = 0xaaaa_aaaa_0000_0000 | u64::from(crc);
            c.regs.rbx = data;
            c.run(bytes).unwrap();
            assert_eq!(
                c.regs.rax,
                u64::from(want),
                "{bytes:02x?} crc {crc:#x} data {data:#x}"
            );
            assert_eq!(c.regs.rip, 0x1000 + bytes.len() as u64);
        }
    }
}

#[test]
fn int3_is_a_trap_to_vector_3() {
    let mut c = FakeCpu::new();
    assert_eq!(
        c.run(&[0xcc]).unwrap(),
        Outcome::Inject {
            vector: VECTOR_BP,
            error_code: None
        }
    );
    assert_eq!(c.regs.rip, 0x1001);
}

#[test]
fn stac_and_clac_toggle_ac() {
    let mut c = FakeCpu::new();
    c.run(&[0x0f, 0x01, 0xcb]).unwrap();
    assert_ne!(c.regs.rflags & RFLAGS_AC, 0);
    c.run(&[0x0f, 0x01, 0xca]).unwrap();
    assert_eq!(c.regs.rflags & RFLAGS_AC, 0);
    assert_eq!(c.regs.rip, 0x1006);
}

#[test]
fn xgetbv_reads_xcr0_or_faults() {
    let mut c = FakeCpu::new();
    assert_eq!(
        c.run(&[0x0f, 0x01, 0xd0]).unwrap(),
        Outcome::Inject {
            vector: VECTOR_UD,
            error_code: None
        },
        "#UD without CR4.OSXSAVE"
    );
    c.sregs.cr4 |= CR4_OSXSAVE;
    c.xcr0 = 0x2_0000_0007;
    c.run(&[0x0f, 0x01, 0xd0]).unwrap();
    assert_eq!((c.regs.rax, c.regs.rdx), (7, 2));
    c.regs.rcx = 5;
    assert!(matches!(
        c.run(&[0x0f, 0x01, 0xd0]).unwrap(),
        Outcome::Inject {
            vector: VECTOR_GP,
            ..
        }
    ));
}

#[test]
fn fwait_is_a_nop_unless_an_x87_exception_is_pending() {
    let mut c = FakeCpu::new();
    assert_eq!(c.run(&[0x9b]).unwrap(), Outcome::Completed);
    assert_eq!(c.regs.rip, 0x1001);
    c.fsw = FSW_ES;
    assert_eq!(
        c.run(&[0x9b]).unwrap(),
        Outcome::Inject {
            vector: VECTOR_MF,
            error_code: None
        }
    );
    assert_eq!(c.regs.rip, 0x1001, "#MF is a fault: RIP stays");
}

#[test]
fn ldmxcsr_and_stmxcsr_move_mxcsr_through_memory() {
    let mut c = FakeCpu::new();
    c.regs.rsp = 0x3000;
    c.mem[0x3004..0x3008].copy_from_slice(&0x9fc0u32.to_le_bytes());
    // ldmxcsr [rsp+4], as in Linux's kernel_fpu_begin
    assert_eq!(
        c.run(&[0x0f, 0xae, 0x54, 0x24, 0x04]).unwrap(),
        Outcome::Completed
    );
    assert_eq!(c.mxcsr, 0x9fc0);
    assert_eq!(c.regs.rip, 0x1005);
    // stmxcsr [rsp+8]
    c.run(&[0x0f, 0xae, 0x5c, 0x24, 0x08]).unwrap();
    assert_eq!(&c.mem[0x3008..0x300c], &0x9fc0u32.to_le_bytes());
    // Reserved bits: #GP, MXCSR unchanged.
    c.mem[0x3004..0x3008].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert!(matches!(
        c.run(&[0x0f, 0xae, 0x54, 0x24, 0x04]).unwrap(),
        Outcome::Inject {
            vector: VECTOR_GP,
            ..
        }
    ));
    assert_eq!(c.mxcsr, 0x9fc0);
}

#[test]
fn rdtscp_loads_tsc_and_aux() {
    let mut c = FakeCpu::new();
    c.run(&[0x0f, 0x01, 0xf9]).unwrap();
    assert_eq!(
        (c.regs.rax, c.regs.rdx, c.regs.rcx),
        (0x9abc_def0, 0x1234_5678, 0x42)
    );
}

#[test]
fn cmpxchg16b_succeeds_then_fails_like_the_cpu() {
    let mut c = FakeCpu::new();
    c.regs.rdi = 0x4000;
    let old: u128 = 0x2222_2222_2222_2222_1111_1111_1111_1111;
    c.mem[0x4000..0x4010].copy_from_slice(&old.to_le_bytes());
    c.regs.rax = 0x1111_1111_1111_1111;
    c.regs.rdx = 0x2222_2222_2222_2222;
    c.regs.rbx = 0xbbbb;
    c.regs.rcx = 0xcccc;
    // lock cmpxchg16b [rdi]
    let insn = [0xf0, 0x48, 0x0f, 0xc7, 0x0f];
    c.run(&insn).unwrap();
    assert_ne!(c.regs.rflags & RFLAGS_ZF, 0);
    let now = u128::from_le_bytes(c.mem[0x4000..0x4010].try_into().unwrap());
    assert_eq!(now, 0xcccc_u128 << 64 | 0xbbbb);
    // Again: memory no longer matches RDX:RAX, which get its value.
    c.regs.rip = 0x1000;
    c.run(&insn).unwrap();
    assert_eq!(c.regs.rflags & RFLAGS_ZF, 0);
    assert_eq!((c.regs.rax, c.regs.rdx), (0xbbbb, 0xcccc));
    // Misaligned: #GP.
    c.regs.rdi = 0x4008;
    assert!(matches!(
        c.run(&insn).unwrap(),
        Outcome::Inject {
            vector: VECTOR_GP,
            ..
        }
    ));
}

#[test]
fn unknown_instructions_and_bad_memory_are_errors() {
    let mut c = FakeCpu::new();
    // pxor xmm0, xmm1
    assert_eq!(
        c.run(&[0x66, 0x0f, 0xef, 0xc1]).unwrap_err(),
        Error::Unsupported("pxor".into())
    );
    c.regs.rdi = 0xffff_0000;
    assert!(matches!(
        c.run(&[0xf3, 0x0f, 0xb8, 0x07]).unwrap_err(),
        Error::Memory(MemFault { write: false, .. })
    ));
}

/// The formatter's names are `Mnemonic`'s in lower case, without
/// prefixes (completion counts and errors are keyed by them).
#[test]
fn mnemonic_names_are_the_lower_case_mnemonics() {
    let cases: [&[u8]; 6] = [
        &[0xf3, 0x0f, 0xb8, 0x07],       // popcnt eax, [rdi]
        &[0xf2, 0x0f, 0x38, 0xf1, 0xc1], // crc32 eax, ecx
        &[0xf3, 0xa4],                   // rep movsb
        &[0xf0, 0x01, 0x07],             // lock add [rdi], eax
        &[0x0f, 0x01, 0xd0],             // xgetbv
        &[0xcc],                         // int3
    ];
    for bytes in cases {
        let insn = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode();
        let want = format!("{:?}", insn.mnemonic()).to_lowercase();
        assert_eq!(mnemonic_name(&insn), want, "{bytes:x?}");
    }
}

#[test]
fn register_views_follow_x86_rules() {
    let mut r = kvm_regs {
        rax: 0x1122_3344_5566_7788,
        ..Default::default()
    };
    assert_eq!(get_reg(&mut r, Register::AH), Some(0x77));
    assert_eq!(get_reg(&mut r, Register::AX), Some(0x7788));
    set_reg(&mut r, Register::AH, 0xaa).unwrap();
    assert_eq!(r.rax, 0x1122_3344_5566_aa88);
    set_reg(&mut r, Register::EAX, 0x1).unwrap();
    assert_eq!(r.rax, 1, "32-bit writes zero-extend");
    set_reg(&mut r, Register::R9W, 0xffff).unwrap();
    assert_eq!(r.r9, 0xffff);
}
