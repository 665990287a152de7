//! The snapshot state file: `TSBMSNAP`, a format version, the length of
//! the state, the state (bincode), and a CRC-64 of everything before it.
//! Reading never trusts the file: sizes are bounded before anything is
//! allocated, the checksum is checked before the state is decoded, and
//! the decoder itself has an allocation limit.

use std::io::Read;
use std::path::Path;

use super::Snapshot;

pub const MAGIC: [u8; 8] = *b"TSBMSNAP";
/// Bumped whenever [`Snapshot`] changes shape.
pub const VERSION: u32 = 2;
/// The largest state Tsubame writes or reads (254 vCPUs need ~3 MiB).
pub const MAX_STATE_BYTES: usize = 32 << 20;
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 8;
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a Tsubame snapshot (no TSBMSNAP magic)")]
    Magic,
    #[error("snapshot format version {found}; this Tsubame reads version {VERSION}")]
    Version { found: u32 },
    #[error("snapshot file is truncated: {0}")]
    Truncated(&'static str),
    #[error("snapshot state of {0} bytes is larger than the {MAX_STATE_BYTES} bytes allowed")]
    TooLarge(u64),
    #[error("snapshot file has {0} bytes after its checksum")]
    Trailing(usize),
    #[error("snapshot file is corrupted (checksum {found:#018x}, expected {expected:#018x})")]
    Checksum { found: u64, expected: u64 },
    #[error("snapshot state does not decode: {0}")]
    Decode(String),
    #[error("snapshot state does not encode: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<MAX_STATE_BYTES>()
}

pub fn encode(s: &Snapshot) -> Result<Vec<u8>, Error> {
    let state =
        bincode::serde::encode_to_vec(s, config()).map_err(|e| Error::Encode(e.to_string()))?;
    if state.len() > MAX_STATE_BYTES {
        return Err(Error::TooLarge(state.len() as u64));
    }
    Ok(frame(&state))
}

/// Header, `state` and checksum: a file as [`decode`] wants it (the fuzz
/// target frames its inputs so they reach the decoder).
pub fn frame(state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + state.len() + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(state);
    let sum = CRC.checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or_default())
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, Error> {
    if bytes.len() < MAGIC.len() || bytes[..8] != MAGIC {
        return Err(Error::Magic);
    }
    if bytes.len() < HEADER {
        return Err(Error::Truncated("header"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(Error::Version { found: version });
    }
    let len = le_u64(&bytes[12..20]);
    if len > MAX_STATE_BYTES as u64 {
        return Err(Error::TooLarge(len));
    }
    let end = HEADER + len as usize;
    if bytes.len() < end + TRAILER {
        return Err(Error::Truncated("state or checksum"));
    }
    if bytes.len() > end + TRAILER {
        return Err(Error::Trailing(bytes.len() - end - TRAILER));
    }
    let expected = CRC.checksum(&bytes[..end]);
    let found = le_u64(&bytes[end..end + TRAILER]);
    if found != expected {
        return Err(Error::Checksum { found, expected });
    }
    let (s, used): (Snapshot, usize) =
        bincode::serde::decode_from_slice(&bytes[HEADER..end], config())
            .map_err(|e| Error::Decode(e.to_string()))?;
    if used != len as usize {
        return Err(Error::Decode(format!(
            "{} bytes left over",
            len as usize - used
        )));
    }
    Ok(s)
}

pub fn write(path: &Path, s: &Snapshot) -> Result<usize, Error> {
    let bytes = encode(s)?;
    std::fs::write(path, &bytes).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(bytes.len())
}

/// Reads at most what a valid file can hold, so a huge file is refused
/// without being read whole.
pub fn read(path: &Path) -> Result<Snapshot, Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let limit = (HEADER + MAX_STATE_BYTES + TRAILER + 1) as u64;
    let mut bytes = Vec::new();
    f.take(limit).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 == limit {
        return Err(Error::TooLarge(limit));
    }
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::tests::sample;

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.machine.cpus, 2);
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].regs.rip, 0x1234);
        assert_eq!(back.devices.serial.scratch, 0x5a);
        assert_eq!(encode(&back).unwrap(), bytes, "re-encoding is stable");
    }

    #[test]
    fn every_damage_is_named() {
        let good = encode(&sample()).unwrap();
        let msg = |b: &[u8]| decode(b).unwrap_err().to_string();
        assert!(msg(b"").contains("magic"));
        assert!(msg(b"ELF\x7f....").contains("magic"));
        assert!(msg(&good[..10]).contains("truncated"));
        assert!(msg(&good[..good.len() - 1]).contains("truncated"));
        let mut v = good.clone();
        v[8] = 9;
        assert!(msg(&v).contains("version 9"), "{}", msg(&v));
        for at in [HEADER, good.len() / 2, good.len() - 9, good.len() - 1] {
            let mut v = good.clone();
            v[at] ^= 0x40;
            assert!(msg(&v).contains("corrupted"), "byte {at}: {}", msg(&v));
        }
        let mut v = good.clone();
        v[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(msg(&v).contains("larger than"), "{}", msg(&v));
        let mut v = good.clone();
        v.push(0);
        assert!(msg(&v).contains("after its checksum"));
    }

    #[test]
    fn a_hostile_state_with_a_valid_checksum_is_refused_without_a_huge_allocation() {
        // A vector length of 2^60 inside the state, checksummed correctly.
        let mut state = vec![0u8; 64];
        state[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(state.len() as u64).to_le_bytes());
        b.extend_from_slice(&state);
        let sum = CRC.checksum(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        let e = decode(&b).unwrap_err().to_string();
        assert!(e.contains("does not decode"), "{e}");
    }

    #[test]
    fn read_names_the_file() {
        let e = read(Path::new("/nonexistent/st.snap"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/st.snap"), "{e}");
    }
}
