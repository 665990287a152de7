use super::*;
use crate::boot::elf_image::elf64;
use std::io::{BufReader, Cursor};

/// A reader that gives at most `step` bytes per call, as decompressors do.
struct Trickle<R>(R, usize);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.1);
        self.0.read(&mut out[..n])
    }
}

fn reader(bytes: &[u8], step: usize) -> ForwardReader<impl BufRead + '_> {
    ForwardReader::new(BufReader::with_capacity(64, Trickle(bytes, step)), 1 << 20)
}

#[test]
fn forward_reads_and_seeks_give_the_stream() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let mut r = reader(&data, 13);
    let mut got = [0u8; 100];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got[..], data[..100]);
    r.seek(SeekFrom::Start(5000)).unwrap();
    r.read_exact(&mut got).unwrap();
    assert_eq!(got[..], data[5000..5100]);
    r.seek(SeekFrom::Current(900)).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, data[6000..]);
    assert_eq!(r.passed(), data.len() as u64);
    assert!(r.failure().is_none());
}

#[test]
fn the_head_and_notes_of_an_elf_can_be_read_again() {
    // elf64 puts the note before the code, and its PT_NOTE header after
    // the PT_LOAD's: as in a vmlinux, the loader goes back for it.
    let code = vec![0x90u8; 5000];
    let elf = elf64(&code, 0x20_0000, Some(0x20_0010));
    let mut r = reader(&elf, 7);
    let mut ehdr = [0u8; 64];
    r.read_exact(&mut ehdr).unwrap();
    let code_at = elf.len() - code.len();
    r.seek(SeekFrom::Start(code_at as u64 + 4000)).unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, code[4000..]);
    // Back to the header, the program headers and the note: all kept.
    r.rewind().unwrap();
    let mut again = vec![0u8; 64 + 2 * 56 + 20];
    r.read_exact(&mut again).unwrap();
    assert_eq!(again, elf[..again.len()]);
    // But not the code.
    r.seek(SeekFrom::Start(code_at as u64)).unwrap();
    assert!(r.read(&mut [0u8; 8]).is_err());
    assert!(matches!(r.failure(), Some(Failure::Backward { .. })));
}

#[test]
fn an_elf_streams_into_guest_memory_through_linux_loader() {
    use crate::vm::layout::MemoryLayout;
    use linux_loader::loader::elf::{Elf, PvhBootCapability};
    use linux_loader::loader::KernelLoader;
    use vm_memory::{Bytes, GuestAddress};
    let mem =
        crate::vm::GuestMemory::from_ranges(&MemoryLayout::new(16).unwrap().ranges()).unwrap();
    let code: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let elf = elf64(&code, 0x20_0000, Some(0x20_0040));
    let mut r = reader(&elf, 4093);
    let loaded = Elf::load(&mem, None, &mut r, Some(GuestAddress(0x10_0000)));
    let loaded = loaded.unwrap_or_else(|e| panic!("{e}: {:?}", r.failure()));
    assert_eq!(
        loaded.pvh_boot_cap,
        PvhBootCapability::PvhEntryPresent(GuestAddress(0x20_0040))
    );
    let mut back = vec![0u8; code.len()];
    mem.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
    assert!(back == code, "the segment differs");
}

#[test]
fn limits_and_decompressor_errors_stop_the_stream_by_name() {
    let data = vec![1u8; 5000];
    let mut r = ForwardReader::new(Cursor::new(&data[..]), 1000);
    let mut all = Vec::new();
    assert!(r.read_to_end(&mut all).is_err());
    assert_eq!(all.len(), 1000);
    assert!(matches!(r.failure(), Some(Failure::TooLarge(1000))));

    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("bad block"));
            }
            let n = out.len().min(self.0);
            out[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let mut r = ForwardReader::new(BufReader::new(Broken(300)), 1 << 20);
    let mut all = Vec::new();
    let e = r.read_to_end(&mut all).unwrap_err();
    assert!(e.to_string().contains("bad block"), "{e}");
    assert!(matches!(r.failure(), Some(Failure::Decompress(_))));
    assert!(r.seek(SeekFrom::End(0)).is_err());
}

#[test]
fn a_note_ending_past_the_address_space_does_not_overflow() {
    // The PT_NOTE header (the second) claims a small note ending past
    // u64::MAX; the file itself is intact.
    let mut elf = elf64(&[0x90; 300], 0x20_0000, Some(0x20_0010));
    let note = 64 + 56;
    elf[note + 8..note + 16].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    elf[note + 32..note + 40].copy_from_slice(&100u64.to_le_bytes());
    let mut r = reader(&elf, 5);
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, elf);
    assert!(r.failure().is_none());
}
