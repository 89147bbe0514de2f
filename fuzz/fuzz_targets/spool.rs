//! The spool's record decoder and recovery (`spool::format`, `spool::recovery`, the read-only
//! `SpoolReader`): what a power cut, a failing SD card or a stranger with a shell leaves in
//! `{state_dir}/events` is read back at every start.
//!
//! Two kinds of input, on a fresh directory under /dev/shm (recovery fsyncs; a disk would
//! leave a few inputs per second):
//! - byte 0 even, **a real spool, damaged**: records appended through `Spool` into small
//!   segments (count and sizes from the input), then the input's edits applied to the files
//!   (a byte set, a file cut, a file deleted, junk appended). Recovery must keep exactly the
//!   records whose bytes are intact: in each segment, every record that ends before the first
//!   changed byte (as `tests/fuzz/spool.rs` checks).
//! - byte 0 odd, **segments built from the input**: file names (any base, up to `u64::MAX`),
//!   headers, records with any seq, length and timestamp and a correct CRC (a fuzzer cannot
//!   find one), and a cursor file, so the seq arithmetic of recovery is reached.
//!
//! For both: the read-only reader and recovery never panic and return only records that were
//! written, in order; `Spool::open` recovers (an error only for a spool whose seq space is used
//! up); an append after it gets a seq above every record kept; a second open finds the same
//! records plus the new one (recovery is idempotent: it neither hides nor revives records).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use pushbox::spool::{Durability, Record, Spool, SpoolError, SpoolOptions};

/// The one error a spool built from the input may answer: its seq space is used up (a record
/// or cursor near `u64::MAX`), said in words.
fn used_up(e: &SpoolError) -> bool {
    e.to_string().contains("sequence numbers")
}

const SEGMENT_HEADER: usize = 8;
const RECORD_HEADER: usize = 24;

fn options() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 512,
        durability: Durability::Fsync,
        ..SpoolOptions::default()
    }
}

/// Input bytes, read front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn segments(dir: &Path) -> BTreeMap<u64, PathBuf> {
    std::fs::read_dir(dir)
        .expect("read the spool dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let base = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((base, p))
        })
        .collect()
}

/// Every record returned is one that was written with that seq, and seqs increase.
fn check(records: &[Record], written: &BTreeMap<u64, BTreeSet<Vec<u8>>>, who: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::new();
    for r in records {
        assert!(
            seqs.last().is_none_or(|&last| r.seq > last),
            "{who}: seq {} after {seqs:?}",
            r.seq
        );
        assert!(
            written.get(&r.seq).is_some_and(|p| p.contains(&r.payload)),
            "{who}: record {} was never written as it is",
            r.seq
        );
        seqs.push(r.seq);
    }
    seqs
}

/// A real spool, then edits; returns what was written and the seqs that must survive.
fn real_damaged(dir: &Path, inp: &mut Input) -> (BTreeMap<u64, BTreeSet<Vec<u8>>>, Vec<u64>) {
    let mut written: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    {
        let (spool, _) = Spool::open(dir, options()).expect("a new spool opens");
        for i in 0..1 + inp.byte() % 24 {
            let n = inp.byte() as usize;
            let p = vec![i; n];
            let seq = spool.append_blocking(p.clone()).expect("append");
            written.entry(seq).or_default().insert(p);
        }
    }
    // Where each record of each segment ends (records in seq order, segments by base).
    let segs = segments(dir);
    let bases: Vec<u64> = segs.keys().copied().collect();
    let mut layout: Vec<(PathBuf, Vec<(u64, usize)>)> = Vec::new();
    for (i, (base, path)) in segs.iter().enumerate() {
        let next = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        let mut end = SEGMENT_HEADER;
        let recs = written
            .range(*base..next)
            .map(|(seq, p)| {
                end += RECORD_HEADER + p.first().map_or(0, Vec::len);
                (*seq, end)
            })
            .collect();
        layout.push((path.clone(), recs));
    }
    let before: Vec<Vec<u8>> = layout
        .iter()
        .map(|(p, _)| std::fs::read(p).expect("read a segment"))
        .collect();
    let mut after = before.clone();
    let mut deleted = vec![false; after.len()];
    for _ in 0..inp.byte() % 8 {
        let i = inp.byte() as usize % after.len();
        let f = &mut after[i];
        let at = u16::from_le_bytes([inp.byte(), inp.byte()]) as usize;
        match inp.byte() % 8 {
            0 => deleted[i] = true,
            1 => f.truncate(at % (f.len() + 1)),
            2 => {
                let n = inp.byte() as usize % 40;
                f.extend(inp.bytes(n));
            }
            _ if !f.is_empty() => {
                let len = f.len();
                f[at % len] = inp.byte();
            }
            _ => {}
        }
    }
    let mut expected = Vec::new();
    for (i, (path, recs)) in layout.iter().enumerate() {
        let first_bad = if deleted[i] {
            std::fs::remove_file(path).expect("delete a segment");
            0
        } else {
            std::fs::write(path, &after[i]).expect("write the damage");
            let (b, a) = (&before[i], &after[i]);
            b.iter()
                .zip(a)
                .position(|(x, y)| x != y)
                .unwrap_or(if a.len() < b.len() {
                    a.len()
                } else {
                    usize::MAX
                })
        };
        expected.extend(
            recs.iter()
                .filter(|(_, end)| *end <= first_bad)
                .map(|r| r.0),
        );
    }
    (written, expected)
}

/// Segment files and a cursor straight from the input, records with correct CRCs.
fn built(dir: &Path, inp: &mut Input) -> BTreeMap<u64, BTreeSet<Vec<u8>>> {
    std::fs::create_dir_all(dir).expect("the spool dir");
    let mut written: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let near_end = |v: u64| u64::MAX - (v & 0xf);
    for _ in 0..1 + inp.byte() % 4 {
        let kind = inp.byte();
        let mut base = match kind & 3 {
            0 => 1 + (inp.byte() as u64 % 16),
            1 => near_end(inp.u64()),
            _ => inp.u64(),
        };
        base = base.max((kind & 4 == 0) as u64);
        let mut file = if kind & 8 == 0 {
            b"PBSPOOL1".to_vec()
        } else {
            {
                let n = inp.byte() as usize % 10;
                inp.bytes(n)
            }
        };
        let mut seq = base;
        for _ in 0..inp.byte() % 6 {
            let how = inp.byte();
            match how & 3 {
                0 => {}
                1 => seq = inp.u64(),
                2 => seq = near_end(inp.u64()),
                _ => seq = seq.wrapping_add(inp.byte() as u64),
            }
            let n = inp.byte() as usize % 32;
            let payload = inp.bytes(n);
            let ts = if how & 4 == 0 {
                1_764_000_000_000
            } else {
                inp.u64()
            };
            let start = file.len();
            let len = if how & 8 == 0 {
                payload.len() as u32
            } else {
                inp.byte() as u32 * 4
            };
            file.extend_from_slice(&[0; 4]);
            file.extend_from_slice(&len.to_le_bytes());
            file.extend_from_slice(&seq.to_le_bytes());
            file.extend_from_slice(&ts.to_le_bytes());
            file.extend_from_slice(&payload);
            let crc = crc32c::crc32c(&file[start + 4..]);
            file[start..start + 4].copy_from_slice(&crc.to_le_bytes());
            written.entry(seq).or_default().insert(payload);
            seq = seq.wrapping_add(1);
        }
        if kind & 16 != 0 {
            let cut = inp.byte() as usize % (file.len() + 1);
            file.truncate(file.len() - cut.min(file.len()));
        }
        std::fs::write(dir.join(format!("{base:020}.seg")), file).expect("write a segment");
    }
    let c = inp.byte();
    if c & 1 != 0 {
        let v = match c >> 1 & 3 {
            0 => (inp.byte() as u64).to_string(),
            1 => near_end(inp.u64()).to_string(),
            2 => inp.u64().to_string(),
            _ => String::from_utf8_lossy(&inp.bytes(8)).into_owned(),
        };
        std::fs::write(dir.join("reader.cursor"), format!("{v}\n")).expect("write a cursor");
    }
    written
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    if inp.is_empty() {
        return;
    }
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temp dir");
    let dir = tmp.path().join("events");
    let (mut written, expected) = if inp.byte() & 1 == 0 {
        let (w, e) = real_damaged(&dir, &mut inp);
        (w, Some(e))
    } else {
        (built(&dir, &mut inp), None)
    };

    // Another process reading before anything is recovered: only records that were written.
    if let Ok(reader) = Spool::open_read_only(&dir) {
        let _ = reader.stats();
        let _ = reader.cursors();
        if let Ok(records) = reader.read_from(1, 1000) {
            check(&records, &written, "the read-only reader");
        }
    }

    let (spool, report) = match Spool::open(&dir, options()) {
        Ok(r) => r,
        Err(e) if expected.is_none() && used_up(&e) => {
            return;
        }
        Err(e) => panic!("recovery failed: {e}"),
    };
    let _ = report.to_string();
    let _ = spool.stats();
    let records = spool.read_from(0, 1000).expect("read after recovery");
    let kept = check(&records, &written, "recovery");
    if let Some(expected) = &expected {
        assert_eq!(
            &kept, expected,
            "recovery keeps exactly the intact records ({report})"
        );
    }
    let new = b"after recovery".to_vec();
    let seq = match spool.append_blocking(new.clone()) {
        Ok(seq) => Some(seq),
        Err(e) if expected.is_none() && used_up(&e) => None,
        Err(e) => panic!("append after recovery: {e} ({report})"),
    };
    if let Some(seq) = seq {
        assert!(
            kept.last().is_none_or(|&last| seq > last),
            "seq {seq} reused ({report})"
        );
        written.entry(seq).or_default().insert(new);
    }
    drop(spool);

    let (spool, again) = Spool::open(&dir, options()).expect("a second open");
    let records = spool
        .read_from(0, 1000)
        .expect("read after the second open");
    let mut want = kept;
    want.extend(seq);
    assert_eq!(
        check(&records, &written, "the second open"),
        want,
        "recovery is idempotent (first: {report}; second: {again})"
    );
});
