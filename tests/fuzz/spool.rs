//! The spool's record decoder and recovery (`spool::format`, `spool::recovery`, the read-only
//! `SpoolReader`): what a power cut, a failing SD card or a stranger with a shell leaves in
//! `{state_dir}/events` is read back at every start.
//!
//! Each input is a real spool: 1–40 records of random sizes written through `Spool` into
//! small segments, closed, then damaged on disk (bytes flipped, runs inserted, deleted or
//! overwritten, files cut, a segment deleted, garbage appended, the cursor file mangled,
//! stray files added). Invariants:
//! - the read-only reader never returns a record that was not written as it is;
//! - `Spool::open` always recovers (no error, no panic), and keeps exactly the records whose
//!   bytes are intact: in each segment, every record that ends before the first damaged byte;
//! - after recovery, appending works, with a sequence number above every record kept;
//! - recovery is idempotent: a second open finds the same records plus the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pushbox::spool::{Durability, Spool, SpoolOptions};

use super::driver::{mutate, Rng, Stats};

const SEGMENT_HEADER: usize = 8;
const RECORD_HEADER: usize = 24;
const CURSOR: &str = "reader";

/// Small segments, so damage lands in the middle ones too. Fsync durability (each append
/// answered once written): `Memory` lingers a millisecond per batch to gather more.
fn options() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 1024,
        durability: Durability::Fsync,
        ..SpoolOptions::default()
    }
}

/// The segment files, by base sequence number.
fn segments(dir: &Path) -> BTreeMap<u64, PathBuf> {
    std::fs::read_dir(dir)
        .expect("read the spool dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?;
            let base = name.strip_suffix(".seg")?.parse().ok()?;
            Some((base, p))
        })
        .collect()
}

/// A segment's base seq, its file, and `(seq, end offset)` of each of its records.
type Segment = (u64, PathBuf, Vec<(u64, usize)>);

/// Where each record of each segment ends.
fn layout(dir: &Path, written: &BTreeMap<u64, Vec<u8>>) -> Vec<Segment> {
    let segs = segments(dir);
    let bases: Vec<u64> = segs.keys().copied().collect();
    let mut out = Vec::new();
    for (i, (base, path)) in segs.into_iter().enumerate() {
        let next = bases.get(i + 1).copied().unwrap_or(u64::MAX);
        let mut end = SEGMENT_HEADER;
        let records: Vec<(u64, usize)> = written
            .range(base..next)
            .map(|(seq, p)| {
                end += RECORD_HEADER + p.len();
                (*seq, end)
            })
            .collect();
        let len = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
        assert_eq!(len, end, "the model of {} matches the file", path.display());
        out.push((base, path, records));
    }
    out
}

/// Damages one segment; returns the offset of its first damaged byte (`usize::MAX`: none).
fn damage(rng: &mut Rng, path: &Path, stats: &mut Stats) -> usize {
    let before = std::fs::read(path).expect("read a segment");
    let mut after = before.clone();
    match rng.below(6) {
        0 => {
            std::fs::remove_file(path).expect("delete a segment");
            stats.add("damage_deleted");
            return 0;
        }
        1 => after.truncate(rng.below(before.len() + 1)),
        2 => {
            let n = rng.range(1, 64);
            let junk = rng.bytes(n);
            after.extend(junk);
        }
        _ => mutate(rng, &mut after, &[b"PBSPOOL1", &[0xff; 4], &[0; 24]]),
    }
    std::fs::write(path, &after).expect("write the damage");
    before
        .iter()
        .zip(&after)
        .position(|(a, b)| a != b)
        .unwrap_or(if after.len() < before.len() {
            after.len()
        } else {
            usize::MAX
        })
}

/// Reads every record; each must be one that was written, unchanged, in order.
fn check_records(
    records: &[pushbox::spool::Record],
    written: &BTreeMap<u64, Vec<u8>>,
    who: &str,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    for r in records {
        assert!(
            seqs.last().is_none_or(|&last| r.seq > last),
            "{who}: seqs out of order"
        );
        let original = written.get(&r.seq);
        assert_eq!(
            original,
            Some(&r.payload),
            "{who}: record {} is not what was written",
            r.seq
        );
        seqs.push(r.seq);
    }
    seqs
}

pub fn one(rng: &mut Rng, stats: &mut Stats) {
    // In memory where there is a tmpfs: recovery and cursors fsync, and a disk's fsyncs
    // would leave a few inputs per second.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temp dir");
    let dir = tmp.path().join("events");
    let mut written = BTreeMap::new();
    {
        let (spool, report) = Spool::open(&dir, options()).expect("a new spool opens");
        assert!(report.is_clean());
        spool.cursor(CURSOR).expect("a cursor");
        for _ in 0..rng.range(1, 40) {
            let n = if rng.chance(10) { 700 } else { rng.below(120) };
            let p = rng.bytes(n);
            let seq = spool.append_blocking(p.clone()).expect("append");
            written.insert(seq, p);
        }
    }
    let segs = layout(&dir, &written);
    stats.add_n("segments_written", segs.len() as u64);

    // The damage: one or two segments (the last one most often, as a power cut does).
    let mut first_bad: BTreeMap<u64, usize> = BTreeMap::new();
    for _ in 0..rng.range(1, 2) {
        let i = if rng.chance(50) {
            segs.len() - 1
        } else {
            rng.below(segs.len())
        };
        let (base, path, _) = &segs[i];
        if !path.exists() {
            continue;
        }
        let at = damage(rng, path, stats);
        let e = first_bad.entry(*base).or_insert(usize::MAX);
        *e = (*e).min(at);
    }
    if rng.chance(20) {
        let cursor = dir.join(format!("{CURSOR}.cursor"));
        if let Ok(mut c) = std::fs::read(&cursor) {
            mutate(rng, &mut c, &[b"7 ", b"00000000", b"\n"]);
            std::fs::write(&cursor, c).expect("write the cursor");
            stats.add("damage_cursor");
        }
    }
    if rng.chance(10) {
        std::fs::write(dir.join(format!("{}.cursor.tmp", CURSOR)), b"half").expect("tmp");
        std::fs::write(dir.join("notes.txt"), b"stray").expect("stray");
    }
    let expected: Vec<u64> = segs
        .iter()
        .flat_map(|(base, _, records)| {
            let bad = first_bad.get(base).copied().unwrap_or(usize::MAX);
            records
                .iter()
                .filter(move |(_, end)| *end <= bad)
                .map(|(seq, _)| *seq)
        })
        .collect();

    // Another process reading while nothing is recovered yet: only intact records, if any.
    if let Ok(reader) = Spool::open_read_only(&dir) {
        let _ = reader.stats();
        let _ = reader.cursors();
        if let Ok(records) = reader.read_from(1, usize::MAX) {
            check_records(&records, &written, "the read-only reader");
            stats.add("reader_read");
        }
    }

    let (spool, report) = Spool::open(&dir, options())
        .unwrap_or_else(|e| panic!("recovery failed on a damaged spool: {e}"));
    let _ = report.to_string();
    if !report.is_clean() {
        stats.add("recovery_reported_damage");
    }
    let records = spool.read_from(1, usize::MAX).expect("read after recovery");
    let kept = check_records(&records, &written, "recovery");
    assert_eq!(
        kept, expected,
        "recovery keeps exactly the intact records ({report})"
    );
    if !kept.is_empty() && !first_bad.is_empty() {
        stats.add("kept_records_after_damage");
    }
    assert_eq!(spool.cursor(CURSOR).expect("the cursor"), 0, "{report}");
    let new = b"after recovery".to_vec();
    let seq = spool
        .append_blocking(new.clone())
        .expect("append after recovery");
    assert!(
        kept.last().is_none_or(|&last| seq > last),
        "seq {seq} reused"
    );
    drop(spool);
    written.insert(seq, new);

    let (spool, again) = Spool::open(&dir, options()).expect("a second open");
    let records = spool
        .read_from(1, usize::MAX)
        .expect("read after the second open");
    let mut want = expected;
    want.push(seq);
    assert_eq!(
        check_records(&records, &written, "the second open"),
        want,
        "recovery is idempotent ({again})"
    );
    stats.add("recovered");
}
