//! A decompressing stream made to look like a file for linux-loader's ELF
//! loader, so that a bzImage's vmlinux goes into guest memory as it is
//! decompressed, without ever being whole in the VMM's memory (a Debian
//! kernel is 53 MB decompressed).
//!
//! The loader reads the ELF header and program headers, then each
//! loadable segment in turn, in file order in every vmlinux Linux builds;
//! forward seeks are served by skipping. It goes back only for the PVH
//! note, which lies inside the first segment: the head (ELF header and
//! program headers) and the notes are kept as they pass, and any other
//! backward seek fails with [`Failure::Backward`], after which the caller
//! can decompress the whole payload instead.

use std::io::{self, BufRead, Read, Seek, SeekFrom};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
/// The head kept is at most this long (e_phoff plus the program headers;
/// 64 bytes plus a handful of 56-byte entries in a vmlinux).
const MAX_HEAD: u64 = 64 * 1024;
/// Notes kept, in all, at most (a vmlinux's are a few hundred bytes).
const MAX_KEPT_NOTES: u64 = 64 * 1024;

/// Why the stream stopped serving the loader.
#[derive(Debug)]
pub enum Failure {
    /// The decompressor failed: the payload is corrupt or truncated.
    Decompress(io::Error),
    /// The stream went past `limit` bytes.
    TooLarge(u64),
    /// The loader wanted bytes already passed and not kept.
    Backward { at: u64, passed: u64 },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Decompress(e) => write!(f, "{e}"),
            Failure::TooLarge(limit) => write!(f, "it decompresses to more than {limit} bytes"),
            Failure::Backward { at, passed } => write!(
                f,
                "the loader went back to byte {at} of the stream, already at {passed}"
            ),
        }
    }
}

/// Bytes of the stream kept for a second read: `bytes` holds those from
/// `start` that have passed so far, up to `len`.
struct Kept {
    start: u64,
    len: u64,
    bytes: Vec<u8>,
}

impl Kept {
    /// Copies what of `chunk` (the stream's bytes from `at`) falls in this range.
    fn record(&mut self, at: u64, chunk: &[u8]) {
        // start and len come from the image: saturate, never overflow.
        let have = self.start.saturating_add(self.bytes.len() as u64);
        let end = self.start.saturating_add(self.len);
        let chunk_end = at + chunk.len() as u64;
        if have >= end || chunk_end <= have || at > have {
            return;
        }
        let from = (have - at) as usize;
        let to = (end.min(chunk_end) - at) as usize;
        self.bytes.extend_from_slice(&chunk[from..to]);
    }

    /// The kept bytes from `pos` on, if `pos` is in the part kept so far.
    fn at(&self, pos: u64) -> Option<&[u8]> {
        let have = self.start.saturating_add(self.bytes.len() as u64);
        (pos >= self.start && pos < have).then(|| &self.bytes[(pos - self.start) as usize..])
    }
}

/// A `Read + Seek + ReadVolatile` view of a forward-only stream.
pub struct ForwardReader<R> {
    inner: R,
    /// The next byte `inner` will give.
    passed: u64,
    /// Where the loader reads next.
    pos: u64,
    limit: u64,
    kept: Vec<Kept>,
    failure: Option<Failure>,
}

impl<R: BufRead> ForwardReader<R> {
    /// Reads the stream's head and, if it is an ELF file, notes which
    /// ranges to keep. At most `limit` bytes of the stream are read.
    pub fn new(inner: R, limit: u64) -> Self {
        let mut r = ForwardReader {
            inner,
            passed: 0,
            pos: 0,
            limit,
            kept: vec![Kept {
                start: 0,
                len: EHDR_SIZE as u64,
                bytes: Vec::new(),
            }],
            failure: None,
        };
        r.pass_to(EHDR_SIZE as u64);
        if let Some(end) = program_headers_end(r.head()) {
            r.kept[0].len = end;
            r.pass_to(end);
            let mut total = 0u64;
            for (start, len) in notes_of(r.head()) {
                total = total.saturating_add(len);
                if total <= MAX_KEPT_NOTES {
                    r.kept.push(Kept {
                        start,
                        len,
                        bytes: Vec::new(),
                    });
                }
            }
        }
        r
    }

    /// The stream's first bytes (up to the program headers' end, when
    /// they are there), whatever their format.
    pub fn head(&self) -> &[u8] {
        &self.kept[0].bytes
    }

    /// How far into the stream the loader got.
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Why reading stopped, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Moves `inner` on to `to` (or its end), keeping what must be kept.
    fn pass_to(&mut self, to: u64) {
        while self.passed < to && self.failure.is_none() {
            let Some(chunk) = self.fill() else { return };
            let n = chunk.min((to - self.passed) as usize);
            self.consume_passed(n);
        }
    }

    /// How many bytes `inner` has ready at `passed` (within `limit`);
    /// `None` at its end or on failure.
    fn fill(&mut self) -> Option<usize> {
        while self.failure.is_none() {
            match self.inner.fill_buf() {
                Ok([]) => return None,
                Ok(_) if self.passed >= self.limit => {
                    self.failure = Some(Failure::TooLarge(self.limit))
                }
                Ok(buf) => return Some(buf.len().min((self.limit - self.passed) as usize)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failure = Some(Failure::Decompress(e)),
            }
        }
        None
    }

    /// Records and consumes the next `n` bytes of `inner`'s buffer.
    fn consume_passed(&mut self, n: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            for k in &mut self.kept {
                k.record(self.passed, &buf[..n]);
            }
        }
        self.inner.consume(n);
        self.passed += n as u64;
    }

    /// Hands up to `want` bytes at `pos` to `take` (which says how many it
    /// used); 0 at the end of the stream.
    fn serve(
        &mut self,
        want: usize,
        take: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if let Some(bytes) = self.kept.iter().find_map(|k| k.at(self.pos)) {
            let n = take(&bytes[..bytes.len().min(want)])?;
            self.pos += n as u64;
            return Ok(n);
        }
        if self.pos < self.passed {
            let failure = Failure::Backward {
                at: self.pos,
                passed: self.passed,
            };
            let e = io::Error::other(failure.to_string());
            self.failure = Some(failure);
            return Err(e);
        }
        self.pass_to(self.pos);
        let Some(ready) = self.fill() else {
            return match &self.failure {
                None => Ok(0),
                Some(f) => Err(io::Error::other(f.to_string())),
            };
        };
        let buf = self.inner.fill_buf()?;
        let n = take(&buf[..ready.min(want)])?;
        self.consume_passed(n);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> Read for ForwardReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.serve(out.len(), |b| {
            out[..b.len()].copy_from_slice(b);
            Ok(b.len())
        })
    }
}

/// Fills the whole slice unless the stream ends: vm-memory's
/// `read_exact_volatile_from` makes one call per memory region and takes
/// a short count for an error, as a file never gives one.
impl<R: BufRead> ReadVolatile for ForwardReader<R> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let mut rest = buf.offset(done)?;
            let n = self
                .serve(rest.len(), |mut b| {
                    b.read_volatile(&mut rest)
                        .map_err(|e| io::Error::other(e.to_string()))
                })
                .map_err(VolatileMemoryError::IOError)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

impl<R: BufRead> Seek for ForwardReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        }
        .ok_or_else(|| io::Error::other(format!("cannot seek to {to:?} in a stream")))?;
        self.pos = pos;
        Ok(pos)
    }
}

/// `n` (at most 8) little-endian bytes of `b` at `at`, if it has them.
fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(n)?)?;
    Some(bytes.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
}

/// An ELF64 header's program-header table: (offset, entry size, count).
fn program_headers(ehdr: &[u8]) -> Option<(u64, u64, u64)> {
    if !ehdr.starts_with(b"\x7fELF") || ehdr.get(4) != Some(&2) {
        return None;
    }
    Some((le(ehdr, 0x20, 8)?, le(ehdr, 0x36, 2)?, le(ehdr, 0x38, 2)?))
}

/// Where an ELF64 file's program headers end, from its header; `None` if
/// `ehdr` is not one or they lie beyond [`MAX_HEAD`].
fn program_headers_end(ehdr: &[u8]) -> Option<u64> {
    let (phoff, phentsize, phnum) = program_headers(ehdr)?;
    let end = phoff.checked_add(phentsize * phnum)?;
    (phentsize >= 56 && phoff >= EHDR_SIZE as u64 && end <= MAX_HEAD).then_some(end)
}

/// The (offset, size) of each PT_NOTE segment, from the program headers in
/// `head` (the file's first bytes, up to their end).
fn notes_of(head: &[u8]) -> Vec<(u64, u64)> {
    let Some((phoff, phentsize, phnum)) = program_headers(head) else {
        return Vec::new();
    };
    // Entries outside `head` are skipped: p + 32 cannot overflow.
    (0..phnum)
        .filter_map(|i| usize::try_from(phoff.checked_add(i * phentsize)?).ok())
        .filter(|&p| p < head.len() && le(head, p, 4) == Some(u64::from(PT_NOTE)))
        .filter_map(|p| Some((le(head, p + 8, 8)?, le(head, p + 32, 8)?)))
        .collect()
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
