//! Host-side decompression of a bzImage's payload: the compressed vmlinux
//! the in-guest decompressor would otherwise unpack (for minutes, when
//! guest kernel code is emulated). Each format Linux can build with, read
//! by a well-kept crate; LZO has none, so LZO kernels boot the classic way.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

/// Decompressed kernels larger than this are refused (a bad or hostile
/// image must not exhaust host memory).
pub const MAX_KERNEL_SIZE: usize = 1 << 30;
/// Legacy LZ4 frames (`lz4 -l`, what Linux uses) hold blocks of 8 MiB.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// LZ4's worst case for a block of that size: a longer one is corrupt.
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
/// The buffer between a streaming decompressor and the kernel loader.
const STREAM_BUFFER: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown compression (payload starts {0:02x?})")]
    Unknown(Vec<u8>),
    #[error("{0} payloads cannot be decompressed on the host")]
    Unsupported(Compression),
    #[error("{format} payload is corrupt: {reason}")]
    Corrupt { format: Compression, reason: String },
    #[error("{0} payload decompresses to more than {MAX_KERNEL_SIZE} bytes")]
    TooLarge(Compression),
}

/// Recognises a payload by its magic bytes.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    let starts = |m: &[u8]| payload.starts_with(m);
    Some(if starts(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if starts(b"BZh") {
        Compression::Bzip2
    } else if starts(&[0x5d, 0x00, 0x00]) {
        Compression::Lzma
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if starts(&[0x89, b'L', b'Z', b'O']) {
        Compression::Lzo
    } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Compression::Lz4
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        return None;
    })
}

/// Decompresses a whole payload. Linux appends the decompressed size as a
/// 32-bit word to every format but gzip (which carries its own); readers
/// that stop at the end of their stream ignore it.
pub fn decompress(payload: &[u8]) -> Result<(Compression, Vec<u8>), Error> {
    let format =
        detect(payload).ok_or_else(|| Error::Unknown(payload.iter().take(8).copied().collect()))?;
    let corrupt = |e: &dyn fmt::Display| Error::Corrupt {
        format,
        reason: e.to_string(),
    };
    let out = match format {
        Compression::Gzip => read_bounded(format, flate2::read::GzDecoder::new(payload))?,
        Compression::Bzip2 => read_bounded(format, bzip2::read::BzDecoder::new(payload))?,
        Compression::Zstd => {
            let mut input = payload;
            let dec =
                ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| corrupt(&e))?;
            read_bounded(format, dec)?
        }
        Compression::Lzma => strict_stream(payload, |mut r, w| lzma_rs::lzma_decompress(&mut r, w))
            .map_err(|e| corrupt(&e))?,
        Compression::Xz => strict_stream(payload, |mut r, w| lzma_rs::xz_decompress(&mut r, w))
            .map_err(|e| corrupt(&e))?,
        Compression::Lz4 => lz4_legacy(payload)?,
        Compression::Lzo => return Err(Error::Unsupported(format)),
    };
    if out.len() > MAX_KERNEL_SIZE {
        return Err(Error::TooLarge(format));
    }
    Ok((format, out))
}

/// A reader of the decompressed payload, which is `len` bytes of `input`
/// in `format`, for the formats whose crates decompress as they are read:
/// the kernel goes into guest memory a buffer at a time. `None` for LZMA
/// and XZ (lzma-rs writes rather than is read: [`decompress`] them whole).
pub fn stream<'a, R: Read + 'a>(
    format: Compression,
    input: R,
    len: u64,
) -> Result<Option<Box<dyn BufRead + 'a>>, Error> {
    let buffered = |r: Box<dyn Read + 'a>| -> Box<dyn BufRead + 'a> {
        Box::new(BufReader::with_capacity(STREAM_BUFFER, r))
    };
    let input = input.take(len);
    Ok(Some(match format {
        Compression::Gzip => buffered(Box::new(flate2::read::GzDecoder::new(input))),
        Compression::Bzip2 => buffered(Box::new(bzip2::read::BzDecoder::new(input))),
        Compression::Zstd => {
            let dec =
                ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| Error::Corrupt {
                    format,
                    reason: e.to_string(),
                })?;
            buffered(Box::new(dec))
        }
        // Without Linux's trailing size word.
        Compression::Lz4 => Box::new(Lz4Legacy::new(input.take(len.saturating_sub(4)))),
        Compression::Lzma | Compression::Xz => return Ok(None),
        Compression::Lzo => return Err(Error::Unsupported(format)),
    }))
}

/// The legacy LZ4 frame read a block at a time: each block decompressed
/// whole (at most 8 MiB), then handed out.
struct Lz4Legacy<R> {
    input: R,
    compressed: Vec<u8>,
    block: Vec<u8>,
    filled: usize,
    at: usize,
}

impl<R: Read> Lz4Legacy<R> {
    fn new(input: R) -> Self {
        Lz4Legacy {
            input,
            compressed: Vec::new(),
            block: Vec::new(),
            filled: 0,
            at: 0,
        }
    }

    /// Decompresses the next block; false at the end of the frame.
    fn next_block(&mut self) -> io::Result<bool> {
        let corrupt = |why: String| io::Error::other(format!("lz4 payload is corrupt: {why}"));
        loop {
            let mut word = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match self.input.read(&mut word[got..]) {
                    Ok(0) if got == 0 => return Ok(false),
                    Ok(0) => return Err(corrupt("truncated block length".into())),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let len = u32::from_le_bytes(word);
            if len == LZ4_LEGACY_MAGIC {
                continue; // a frame's start, or concatenated frames
            }
            let len = len as usize;
            if len > LZ4_LEGACY_MAX_COMPRESSED {
                return Err(corrupt(format!("a block of {len} bytes")));
            }
            self.compressed.resize(len, 0);
            self.input
                .read_exact(&mut self.compressed)
                .map_err(|e| corrupt(format!("block of {len} bytes: {e}")))?;
            if self.block.is_empty() {
                self.block = vec![0; LZ4_LEGACY_BLOCK];
            }
            self.filled = lz4_flex::block::decompress_into(&self.compressed, &mut self.block)
                .map_err(|e| corrupt(e.to_string()))?;
            self.at = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4Legacy<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let ready = self.fill_buf()?;
            let n = ready.len().min(out.len());
            out[..n].copy_from_slice(&ready[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Lz4Legacy<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at == self.filled {
            if !self.next_block()? {
                break;
            }
        }
        Ok(&self.block[self.at..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.filled);
    }
}

/// lzma-rs refuses bytes after the end of its stream: try without Linux's
/// trailing size word first, then the payload as it is.
fn strict_stream(
    payload: &[u8],
    decode: impl Fn(&[u8], &mut Bounded) -> lzma_rs::error::Result<()>,
) -> lzma_rs::error::Result<Vec<u8>> {
    let mut out = Bounded(Vec::new());
    let unsized_payload = &payload[..payload.len().saturating_sub(4)];
    if decode(unsized_payload, &mut out).is_ok() {
        return Ok(out.0);
    }
    out.0.clear();
    decode(payload, &mut out).map(|()| out.0)
}

/// A writer that refuses to grow past [`MAX_KERNEL_SIZE`].
struct Bounded(Vec<u8>);

impl io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_KERNEL_SIZE {
            return Err(io::Error::other("decompressed kernel too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn read_bounded(format: Compression, r: impl Read) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    r.take(MAX_KERNEL_SIZE as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Corrupt {
            format,
            reason: e.to_string(),
        })?;
    if out.len() > MAX_KERNEL_SIZE {
        return Err(Error::TooLarge(format));
    }
    Ok(out)
}

/// The legacy LZ4 frame: magic, then (compressed length, block) pairs, each
/// block at most 8 MiB decompressed; Linux's trailing size bounds the output.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        format: Compression::Lz4,
        reason,
    };
    if payload.len() < 8 {
        return Err(corrupt("truncated".into()));
    }
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let size = word(&payload[payload.len() - 4..]) as usize;
    if size > MAX_KERNEL_SIZE {
        return Err(Error::TooLarge(Compression::Lz4));
    }
    let mut out = vec![0u8; size];
    let mut pos = 0;
    let mut data = &payload[4..payload.len() - 4];
    while data.len() >= 4 && pos < size {
        let len = word(data) as usize;
        data = &data[4..];
        if len == LZ4_LEGACY_MAGIC as usize {
            continue; // concatenated frame
        }
        let block = data
            .get(..len)
            .ok_or_else(|| corrupt(format!("block of {len} bytes runs past the end")))?;
        let end = (pos + LZ4_LEGACY_BLOCK).min(size);
        pos += lz4_flex::block::decompress_into(block, &mut out[pos..end])
            .map_err(|e| corrupt(e.to_string()))?;
        data = &data[len..];
    }
    if pos != size {
        return Err(corrupt(format!(
            "{pos} bytes decompressed, {size} expected"
        )));
    }
    Ok(out)
}

/// Compressors for tests: the same container formats Linux's build makes.
#[cfg(test)]
pub mod compress {
    use super::*;
    use std::io::Write;

    pub fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend((block.len() as u32).to_le_bytes());
            out.extend(block);
        }
        out.extend((data.len() as u32).to_le_bytes());
        out
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub fn with_size(mut v: Vec<u8>, size: usize) -> Vec<u8> {
        v.extend((size as u32).to_le_bytes());
        v
    }

    pub fn zstd(data: &[u8]) -> Vec<u8> {
        let c =
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
        with_size(c, data.len())
    }

    pub fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut io::BufReader::new(data), &mut out).unwrap();
        with_size(out, data.len())
    }

    pub fn lzma(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::lzma_compress(&mut io::BufReader::new(data), &mut out).unwrap();
        with_size(out, data.len())
    }

    pub fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        with_size(e.finish().unwrap(), data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        // Compressible but not trivial, and over one LZ4 legacy block.
        (0..9 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn every_supported_format_round_trips_whole_and_streamed() {
        let data = sample();
        let small = &data[..200_000];
        for (want, packed, original) in [
            (Compression::Lz4, compress::lz4_legacy(&data), &data[..]),
            (Compression::Gzip, compress::gzip(&data), &data[..]),
            (Compression::Zstd, compress::zstd(small), small),
            (Compression::Xz, compress::xz(small), small),
            (Compression::Lzma, compress::lzma(small), small),
            (Compression::Bzip2, compress::bzip2(small), small),
        ] {
            let (format, out) = decompress(&packed).unwrap_or_else(|e| panic!("{want}: {e}"));
            assert_eq!(format, want);
            assert!(out == original, "{want}: output differs");
            // lzma-rs writes rather than is read: those two stay whole.
            let streams = !matches!(format, Compression::Xz | Compression::Lzma);
            let reader = stream(format, &packed[..], packed.len() as u64).unwrap();
            assert_eq!(reader.is_some(), streams, "{format}");
            if let Some(mut r) = reader {
                let mut out = Vec::new();
                r.read_to_end(&mut out).unwrap();
                assert!(out == original, "{format}: streamed output differs");
            }
        }
    }

    #[test]
    fn a_streamed_lz4_block_longer_than_lz4_allows_is_corrupt() {
        let mut packed = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        packed.extend(u32::MAX.to_le_bytes());
        packed.extend([0u8; 64]);
        packed.extend(100u32.to_le_bytes()); // Linux's trailing size
        let mut r = stream(Compression::Lz4, &packed[..], packed.len() as u64)
            .unwrap()
            .unwrap();
        let e = r.fill_buf().unwrap_err().to_string();
        assert!(e.contains("a block of 4294967295 bytes"), "{e}");
    }

    #[test]
    fn lzo_and_garbage_are_refused_by_name() {
        let lzo = [0x89, b'L', b'Z', b'O', 0, 0, 0, 0];
        assert!(matches!(
            decompress(&lzo),
            Err(Error::Unsupported(Compression::Lzo))
        ));
        assert!(matches!(decompress(b"hello world"), Err(Error::Unknown(_))));
        assert!(matches!(decompress(&[]), Err(Error::Unknown(_))));
    }

    #[test]
    fn truncated_payloads_are_corrupt_not_panics() {
        let data = sample();
        for packed in [
            compress::lz4_legacy(&data),
            compress::gzip(&data[..100_000]),
            compress::zstd(&data[..100_000]),
            compress::xz(&data[..100_000]),
        ] {
            for cut in [5, packed.len() / 2, packed.len() - 5] {
                let r = decompress(&packed[..cut]);
                assert!(r.is_err(), "cut at {cut} of {} decoded", packed.len());
            }
        }
    }

    #[test]
    fn lz4_size_lies_are_caught() {
        let mut packed = compress::lz4_legacy(b"some kernel bytes, some kernel bytes");
        let n = packed.len();
        packed[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decompress(&packed), Err(Error::TooLarge(_))));
        packed[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decompress(&packed), Err(Error::Corrupt { .. })));
    }
}
