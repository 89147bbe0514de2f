//! The on-disk format: segment file names, the segment header, record framing and the
//! validating scanner shared by recovery, reads and the read-only reader.
//!
//! ```text
//! segment file  <first seq, 20 digits>.seg
//!   header      8 bytes   b"PBSPOOL1"
//!   records     back to back, nothing between them:
//!     crc32c    u32 LE    CRC32C (Castagnoli) of the next 20 header bytes and the payload
//!     len       u32 LE    payload length (at most MAX_RECORD_BYTES)
//!     seq       u64 LE    sequence number; the first record has the file name's seq, then +1
//!     time      u64 LE    unix time in milliseconds when the record was committed
//!     payload   len bytes opaque
//! ```
//!
//! A record is valid when it is complete, its CRC matches and its seq is the expected one.
//! Everything from the first invalid record on is "the damage".

use std::path::{Path, PathBuf};

/// The first bytes of every segment file (format version 1).
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"PBSPOOL1";
/// Length of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
/// Length of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// The largest payload the spool accepts (and the largest length recovery believes).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// The largest seq a record may have: the seq after it, which the writer and recovery keep as
/// "the next seq", must still fit in a `u64`. A record claiming `u64::MAX` (a damaged or
/// foreign file) overflowed that next seq in recovery and in the writer (found by
/// `fuzz/fuzz_targets/spool.rs`).
pub const MAX_SEQ: u64 = u64::MAX - 1;
/// Every `SPARSE_EVERY`-th record of a segment gets an in-memory (seq, offset) index entry.
pub(crate) const SPARSE_EVERY: u64 = 64;

/// `<dir>/<seq:020>.seg`
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// The base seq of a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes a record with this payload length occupies on disk.
pub(crate) fn record_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len) as u64
}

/// Append one framed record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, timestamp_ms: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    // The caller checked payload.len() <= MAX_RECORD_BYTES, which fits in u32.
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A parsed record header (not yet validated against the payload).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub crc: u32,
    pub len: usize,
    pub seq: u64,
    pub timestamp_ms: u64,
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Parse the first `RECORD_HEADER_LEN` bytes of `b` (which must be at least that long).
pub(crate) fn parse_header(b: &[u8]) -> Header {
    Header {
        crc: le_u32(&b[0..4]),
        len: le_u32(&b[4..8]) as usize,
        seq: le_u64(&b[8..16]),
        timestamp_ms: le_u64(&b[16..24]),
    }
}

/// Check a header against its payload.
pub(crate) fn crc_ok(header_bytes: &[u8], payload: &[u8], crc: u32) -> bool {
    let c = crc32c::crc32c(&header_bytes[4..RECORD_HEADER_LEN]);
    crc32c::crc32c_append(c, payload) == crc
}

/// The outcome of decoding one record at the start of a byte slice.
#[derive(Debug)]
pub(crate) enum Decoded<'a> {
    /// A complete record with a matching CRC (its seq is not checked here).
    Record {
        header: Header,
        payload: &'a [u8],
        total: usize,
    },
    /// The slice ends inside the record.
    Incomplete,
    /// The record is complete but wrong.
    Corrupt(&'static str),
}

pub(crate) fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let header = parse_header(buf);
    if header.len > MAX_RECORD_BYTES {
        return Decoded::Corrupt("record length out of range");
    }
    let total = RECORD_HEADER_LEN + header.len;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let payload = &buf[RECORD_HEADER_LEN..total];
    if !crc_ok(&buf[..RECORD_HEADER_LEN], payload, header.crc) {
        return Decoded::Corrupt("CRC mismatch");
    }
    Decoded::Record {
        header,
        payload,
        total,
    }
}

/// How a segment scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// The file ends inside a record (or inside the segment header).
    Torn { offset: u64 },
    /// An invalid record (or a foreign header) at `offset`.
    Corrupt { offset: u64, reason: &'static str },
}

/// What a validating scan of one segment found.
#[derive(Debug, Clone)]
pub(crate) struct SegmentScan {
    /// Valid records.
    pub records: u64,
    /// Offset just after the last valid record (0 if even the header is bad).
    pub valid_len: u64,
    pub first_ts: Option<u64>,
    pub newest_ts: Option<u64>,
    /// (seq, offset) of every SPARSE_EVERY-th record.
    pub sparse: Vec<(u64, u64)>,
    pub end: ScanEnd,
}

/// Scan a whole segment file's bytes. `base` is the seq from its name; records at or past
/// `seq_limit` (the next segment's base) are treated as corrupt.
pub(crate) fn scan_segment(data: &[u8], base: u64, seq_limit: Option<u64>) -> SegmentScan {
    let mut scan = SegmentScan {
        records: 0,
        valid_len: 0,
        first_ts: None,
        newest_ts: None,
        sparse: Vec::new(),
        end: ScanEnd::Clean,
    };
    let hl = SEGMENT_HEADER_LEN as usize;
    if data.len() < hl {
        scan.end = if SEGMENT_MAGIC.starts_with(data) {
            ScanEnd::Torn { offset: 0 }
        } else {
            ScanEnd::Corrupt {
                offset: 0,
                reason: "not a pushbox spool segment (bad header)",
            }
        };
        return scan;
    }
    if &data[..hl] != SEGMENT_MAGIC {
        scan.end = ScanEnd::Corrupt {
            offset: 0,
            reason: "not a pushbox spool segment (bad header)",
        };
        return scan;
    }
    let mut off = hl;
    scan.valid_len = off as u64;
    let mut expected = base;
    while off < data.len() {
        match decode(&data[off..]) {
            Decoded::Incomplete => {
                scan.end = ScanEnd::Torn { offset: off as u64 };
                return scan;
            }
            Decoded::Corrupt(reason) => {
                scan.end = ScanEnd::Corrupt {
                    offset: off as u64,
                    reason,
                };
                return scan;
            }
            Decoded::Record { header, total, .. } => {
                if header.seq != expected {
                    scan.end = ScanEnd::Corrupt {
                        offset: off as u64,
                        reason: "sequence number out of order",
                    };
                    return scan;
                }
                if header.seq > MAX_SEQ {
                    scan.end = ScanEnd::Corrupt {
                        offset: off as u64,
                        reason: "sequence number out of range",
                    };
                    return scan;
                }
                if seq_limit.is_some_and(|limit| header.seq >= limit) {
                    scan.end = ScanEnd::Corrupt {
                        offset: off as u64,
                        reason: "record overlaps the next segment",
                    };
                    return scan;
                }
                if scan.records.is_multiple_of(SPARSE_EVERY) {
                    scan.sparse.push((header.seq, off as u64));
                }
                scan.records += 1;
                scan.first_ts.get_or_insert(header.timestamp_ms);
                scan.newest_ts = Some(
                    scan.newest_ts
                        .map_or(header.timestamp_ms, |t| t.max(header.timestamp_ms)),
                );
                expected = expected.wrapping_add(1);
                off += total;
                scan.valid_len = off as u64;
            }
        }
    }
    scan
}

/// Best-effort count of the records in damaged bytes `data[off..]`: walk the length fields,
/// counting a trailing partial record as one.
pub(crate) fn estimate_records(data: &[u8], mut off: usize) -> u64 {
    let mut n = 0;
    while off < data.len() {
        n += 1;
        if data.len() - off < RECORD_HEADER_LEN {
            break;
        }
        let h = parse_header(&data[off..]);
        if h.len > MAX_RECORD_BYTES {
            break;
        }
        off += RECORD_HEADER_LEN + h.len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        assert_eq!(p, Path::new("/x/00000000000000000042.seg"));
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("99999999999999999999.seg"), None); // > u64::MAX
    }

    #[test]
    fn record_round_trip_and_damage() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 1234, b"hello");
        match decode(&buf) {
            Decoded::Record {
                header,
                payload,
                total,
            } => {
                assert_eq!(
                    (header.seq, header.timestamp_ms, payload),
                    (7, 1234, &b"hello"[..])
                );
                assert_eq!(total, buf.len());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(decode(&buf[..buf.len() - 1]), Decoded::Incomplete));
        buf[10] ^= 1;
        assert!(matches!(decode(&buf), Decoded::Corrupt(_)));
    }
}
