//! Minimal kernel images made in memory: an ELF64 with one loadable
//! segment (and optionally a PVH note), and a bzImage wrapping a payload.
//! For benchmarks and tests that need a guest without a toolchain.

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// An ELF64 x86-64 executable loading `code` at `load_addr` (physical =
/// virtual), entered at `load_addr`, with a PVH note for `pvh_entry`.
pub fn elf64(code: &[u8], load_addr: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let note_off = EHDR_SIZE + phnum * PHDR_SIZE;
    let note_len = if pvh_entry.is_some() { 20 } else { 0 };
    let code_off = (note_off + note_len + 15) & !15;

    let mut f = Vec::with_capacity(code_off + code.len());
    f.extend(b"\x7fELF");
    f.extend([2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(62u16.to_le_bytes()); // EM_X86_64
    f.extend(1u32.to_le_bytes());
    f.extend(load_addr.to_le_bytes()); // e_entry
    f.extend((EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    f.extend(0u64.to_le_bytes()); // e_shoff
    f.extend(0u32.to_le_bytes()); // e_flags
    f.extend((EHDR_SIZE as u16).to_le_bytes());
    f.extend((PHDR_SIZE as u16).to_le_bytes());
    f.extend((phnum as u16).to_le_bytes());
    f.extend([0u8; 6]); // no sections

    let phdr = |f: &mut Vec<u8>, kind: u32, off: usize, addr: u64, len: usize| {
        f.extend(kind.to_le_bytes());
        f.extend(7u32.to_le_bytes()); // RWX
        f.extend((off as u64).to_le_bytes());
        f.extend(addr.to_le_bytes());
        f.extend(addr.to_le_bytes());
        f.extend((len as u64).to_le_bytes());
        f.extend((len as u64).to_le_bytes());
        f.extend(16u64.to_le_bytes());
    };
    phdr(&mut f, PT_LOAD, code_off, load_addr, code.len());
    if let Some(entry) = pvh_entry {
        phdr(&mut f, PT_NOTE, note_off, 0, note_len);
        f.extend(4u32.to_le_bytes()); // namesz
        f.extend(4u32.to_le_bytes()); // descsz
        f.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        f.extend(b"Xen\0");
        f.extend(entry.to_le_bytes());
    }
    f.resize(code_off, 0);
    f.extend(code);
    f
}

/// A bzImage (boot protocol 2.15, 64-bit entry) whose protected-mode code is
/// `pm_code` (the 64-bit entry is at its offset 0x200) followed by `payload`.
pub fn bzimage(pm_code: &[u8], payload: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: usize = 4;
    let setup_len = (SETUP_SECTS + 1) * 512;
    let mut img = vec![0u8; setup_len];
    let put = |img: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        img[off..off + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut img, 0x1f1, &[SETUP_SECTS as u8]);
    put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut img, 0x202, b"HdrS");
    put(&mut img, 0x206, &0x020fu16.to_le_bytes());
    put(&mut img, 0x211, &[1]); // loadflags: LOADED_HIGH
    put(&mut img, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut img, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut img, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut img, 0x236, &0x3u16.to_le_bytes()); // xloadflags: KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
    put(&mut img, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    let pm_len = pm_code.len().max(0x200);
    put(&mut img, 0x248, &(pm_len as u32).to_le_bytes()); // payload_offset
    put(&mut img, 0x24c, &(payload.len() as u32).to_le_bytes());
    let total = pm_len + payload.len();
    put(&mut img, 0x1f4, &(total.div_ceil(16) as u32).to_le_bytes()); // syssize
    let init_size = (total as u32 * 4).max(0x10_0000);
    put(&mut img, 0x260, &init_size.to_le_bytes());
    img.extend(pm_code);
    img.resize(setup_len + pm_len, 0x90);
    img.extend(payload);
    img
}
