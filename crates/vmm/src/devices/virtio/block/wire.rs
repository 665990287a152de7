//! virtio-blk's wire format (virtio 1.2, 5.2.6): the feature bits, the
//! request types and statuses, the request header and the discard /
//! write-zeroes segment, with the limits Tsubame puts on them.

use vm_memory::ByteValued;

pub const SECTOR_SIZE: u64 = 512;
pub(super) const SECTOR_SHIFT: u32 = 9;
pub const QUEUE_SIZE: u16 = 256;

pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Largest data transfer of one request; bounds the bounce buffer.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest discard / write-zeroes range, in sectors.
pub(super) const MAX_RANGE_SECTORS: u32 = 1 << 16;
pub(super) const MAX_RANGE_SEGMENTS: u32 = 1;

/// `struct virtio_blk_outhdr`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8 bytes, 8-aligned).
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}
// SAFETY: plain integers, no padding (8 + 4 + 4 bytes, 8-aligned).
unsafe impl ByteValued for Segment {}
