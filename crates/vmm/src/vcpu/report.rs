//! The report printed when a guest dies: why, where (RIP, mode, CPL), the
//! instruction (bytes and decoded), and the registers. Gathering reads the
//! vCPU; rendering is a pure function so it is tested without a guest.

use std::fmt::Write;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
use kvm_bindings::{kvm_regs, kvm_sregs, KVM_EXIT_INTERNAL_ERROR};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::exit::Fatal;
use crate::vm::GuestMemory;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;
const INSN_MAX: usize = 15;
/// `kvm_run.emulation_failure.flags`: instruction bytes are present.
const EMULATION_FLAG_INSN_BYTES: u64 = 1;

/// KVM_EXIT_INTERNAL_ERROR's payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InternalError {
    pub suberror: u32,
    pub data: Vec<u64>,
}

impl InternalError {
    pub fn suberror_name(&self) -> &'static str {
        match self.suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "exception during event delivery",
            4 => "unexpected exit reason",
            _ => "unknown suberror",
        }
    }

    /// The instruction bytes KVM fetched, for emulation failures that carry
    /// them (`flags`, then a size byte and up to 15 bytes).
    pub fn instruction_bytes(&self) -> Option<Vec<u8>> {
        if self.suberror != 1
            || self.data.len() < 3
            || self.data[0] & EMULATION_FLAG_INSN_BYTES == 0
        {
            return None;
        }
        let raw: Vec<u8> = self.data[1..3]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let size = (raw[0] as usize).min(INSN_MAX);
        (size > 0).then(|| raw[1..1 + size].to_vec())
    }
}

/// The processor mode, as the segment and control registers say.
pub fn mode(sregs: &kvm_sregs) -> &'static str {
    if sregs.cr0 & CR0_PE == 0 {
        "real mode"
    } else if sregs.efer & EFER_LMA != 0 {
        if sregs.cs.l == 1 {
            "64-bit long mode"
        } else {
            "compatibility mode"
        }
    } else if sregs.cs.db == 1 {
        "32-bit protected mode"
    } else {
        "16-bit protected mode"
    }
}

pub fn bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.cr0 & CR0_PE == 0 {
        16
    } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1 {
        64
    } else if sregs.cs.db == 1 {
        32
    } else {
        16
    }
}

pub fn cpl(sregs: &kvm_sregs) -> u8 {
    if sregs.cr0 & CR0_PE == 0 {
        0
    } else {
        (sregs.cs.selector & 3) as u8
    }
}

/// Decodes the first instruction in `bytes`: (its length, Intel syntax).
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Option<(usize, String)> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    decoder.decode_out(&mut insn);
    if insn.is_invalid() {
        return None;
    }
    let mut text = String::new();
    IntelFormatter::new().format(&insn, &mut text);
    Some((insn.len(), text))
}

/// Everything a report shows, read from the vCPU at the moment of death.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// Bytes at CS:RIP, from KVM or from guest memory.
    pub insn: Option<Vec<u8>>,
    pub internal: Option<InternalError>,
    /// Why Tsubame could not carry on (e.g. no completion for it).
    pub note: Option<String>,
    /// The vCPU's last I/O exits before it died, oldest first.
    pub history: Vec<super::exit::Access>,
}

/// Renders the report for vCPU `id`.
pub fn render(id: usize, why: &Fatal, cpu: &CpuSnapshot) -> String {
    let (r, s) = (&cpu.regs, &cpu.sregs);
    let mut out = String::new();
    let _ = write!(out, "vCPU {id}: {why}");
    if let Some(ie) = &cpu.internal {
        let _ = write!(out, ": {} (suberror {})", ie.suberror_name(), ie.suberror);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  mode: {}, CPL {}, paging {}",
        mode(s),
        cpl(s),
        if s.cr0 & CR0_PG != 0 { "on" } else { "off" }
    );
    match &cpu.insn {
        Some(bytes) => {
            let decoded = decode(bytes, bitness(s), r.rip);
            let (len, text) = decoded.unwrap_or((bytes.len(), "(not a valid instruction)".into()));
            let hex: Vec<String> = bytes[..len.min(bytes.len())]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let _ = writeln!(
                out,
                "  instruction at {:#x}: {}  {text}",
                r.rip,
                hex.join(" ")
            );
        }
        None => {
            let _ = writeln!(out, "  instruction at {:#x}: (bytes unavailable)", r.rip);
        }
    }
    let _ = writeln!(
        out,
        "  rip={:#018x} rsp={:#018x} rflags={:#010x}",
        r.rip, r.rsp, r.rflags
    );
    let _ = writeln!(
        out,
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    let _ = writeln!(
        out,
        "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
        r.rsi, r.rdi, r.rbp, r.r8
    );
    let _ = writeln!(
        out,
        "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
        r.r9, r.r10, r.r11, r.r12
    );
    let _ = writeln!(
        out,
        "  r13={:#018x} r14={:#018x} r15={:#018x}",
        r.r13, r.r14, r.r15
    );
    let _ = writeln!(
        out,
        "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    );
    for (name, seg) in [("cs", &s.cs), ("ss", &s.ss), ("ds", &s.ds), ("tr", &s.tr)] {
        let _ = writeln!(
            out,
            "  {name}={:#06x} base={:#x} limit={:#x} type={:#x} dpl={} l={} db={}",
            seg.selector, seg.base, seg.limit, seg.type_, seg.dpl, seg.l, seg.db
        );
    }
    let _ = writeln!(
        out,
        "  gdt={:#x}/{:#x} idt={:#x}/{:#x}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
    );
    if let Some(ie) = &cpu.internal {
        let words: Vec<String> = ie.data.iter().map(|w| format!("{w:#x}")).collect();
        let _ = writeln!(out, "  internal error data: [{}]", words.join(", "));
    }
    if let Some(note) = &cpu.note {
        let _ = writeln!(out, "  not completed: {note}");
    }
    if !cpu.history.is_empty() {
        let _ = writeln!(
            out,
            "  last I/O exits (console traffic left out), oldest first:"
        );
        for a in &cpu.history {
            let _ = writeln!(
                out,
                "    {:<10} {:#x} {}-byte {:#x}",
                a.kind.name(),
                a.addr,
                a.len,
                a.value
            );
        }
    }
    out
}

/// The payload of the KVM_EXIT_INTERNAL_ERROR the vCPU just returned, if
/// that was its last exit.
pub fn internal_error(fd: &mut VcpuFd) -> Option<InternalError> {
    let run = fd.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason says the `internal` member of the union is the
    // one KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    Some(InternalError {
        suberror: internal.suberror,
        data: internal.data[..n].to_vec(),
    })
}

/// Reads what a report needs from a vCPU that just died.
pub fn snapshot(fd: &mut VcpuFd, why: &Fatal, mem: &GuestMemory) -> CpuSnapshot {
    let regs = fd.get_regs().unwrap_or_default();
    let sregs = fd.get_sregs().unwrap_or_default();
    let internal = (*why == Fatal::InternalError).then(|| internal_error(fd).unwrap_or_default());
    let insn = internal
        .as_ref()
        .and_then(InternalError::instruction_bytes)
        .or_else(|| read_at_rip(fd, &regs, &sregs, mem));
    CpuSnapshot {
        regs,
        sregs,
        insn,
        internal,
        note: None,
        history: Vec::new(),
    }
}

/// Up to 15 bytes at CS:RIP, translated through the guest's page tables.
fn read_at_rip(
    fd: &VcpuFd,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    mem: &GuestMemory,
) -> Option<Vec<u8>> {
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut out = Vec::with_capacity(INSN_MAX);
    while out.len() < INSN_MAX {
        let Some(va) = linear.checked_add(out.len() as u64) else {
            break; // RIP at the very top of the address space
        };
        let t = fd.translate_gva(va).ok()?;
        if t.valid == 0 {
            break;
        }
        let in_page = (0x1000 - (va & 0xfff)) as usize;
        let mut chunk = vec![0u8; in_page.min(INSN_MAX - out.len())];
        if mem
            .read_slice(&mut chunk, GuestAddress(t.physical_address))
            .is_err()
        {
            break;
        }
        out.extend(chunk);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_mode() -> kvm_sregs {
        let mut s = kvm_sregs {
            cr0: CR0_PE | CR0_PG,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        };
        s.cs.l = 1;
        s.cs.selector = 0x10;
        s
    }

    #[test]
    fn modes_and_cpl() {
        assert_eq!(mode(&kvm_sregs::default()), "real mode");
        let mut s = kvm_sregs {
            cr0: CR0_PE,
            ..Default::default()
        };
        s.cs.db = 1;
        assert_eq!((mode(&s), bitness(&s)), ("32-bit protected mode", 32));
        let mut l = long_mode();
        assert_eq!(
            (mode(&l), bitness(&l), cpl(&l)),
            ("64-bit long mode", 64, 0)
        );
        l.cs.selector = 0x33;
        assert_eq!(cpl(&l), 3);
    }

    #[test]
    fn pvm_emulation_failure_bytes_are_decoded() {
        // As measured on kvm_pvm: flags=1, size 15, bytes of `popcnt rax, rbx` then junk.
        let mut raw = [0u8; 16];
        raw[0] = 15;
        raw[1..6].copy_from_slice(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]);
        raw[6..16].copy_from_slice(&[0xf4; 10]);
        let ie = InternalError {
            suberror: 1,
            data: vec![
                1,
                u64::from_le_bytes(raw[0..8].try_into().unwrap()),
                u64::from_le_bytes(raw[8..16].try_into().unwrap()),
                0x1000,
                0,
                0,
                0,
                0,
            ],
        };
        let bytes = ie.instruction_bytes().unwrap();
        assert_eq!(bytes.len(), 15);
        let cpu = CpuSnapshot {
            regs: kvm_regs {
                rip: 0x10_0000,
                ..Default::default()
            },
            sregs: long_mode(),
            insn: Some(bytes),
            internal: Some(ie),
            note: None,
            history: vec![],
        };
        let text = render(0, &Fatal::InternalError, &cpu);
        assert!(text.contains("emulation failure (suberror 1)"), "{text}");
        assert!(text.contains("64-bit long mode, CPL 0"), "{text}");
        assert!(
            text.contains("instruction at 0x100000: f3 48 0f b8 c3  popcnt rax,rbx"),
            "{text}"
        );
    }

    #[test]
    fn triple_fault_report_without_bytes() {
        let cpu = CpuSnapshot {
            sregs: long_mode(),
            ..Default::default()
        };
        let text = render(1, &Fatal::Shutdown, &cpu);
        assert!(
            text.starts_with("vCPU 1: KVM_EXIT_SHUTDOWN (triple fault)"),
            "{text}"
        );
        assert!(text.contains("bytes unavailable"));
        assert!(text.contains("rip=0x0000000000000000"));
    }

    #[test]
    fn internal_errors_without_bytes_say_so() {
        let ie = InternalError {
            suberror: 3,
            data: vec![0x80000b0e, 0],
        };
        assert_eq!(ie.instruction_bytes(), None);
        assert_eq!(ie.suberror_name(), "exception during event delivery");
    }
}
