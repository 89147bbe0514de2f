//! Spool tests: real files in temp dirs, real fsync.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::{self, Decoded, SEGMENT_HEADER_LEN};
use super::*;

fn opts(segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        segment_bytes,
        ..SpoolOptions::default()
    }
}

fn open(dir: &Path, o: SpoolOptions) -> (Spool, RecoveryReport) {
    Spool::open(dir, o).expect("open spool")
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 13) as usize)).into_bytes()
}

fn all(s: &Spool) -> Vec<Record> {
    s.read_from(1, usize::MAX).unwrap()
}

/// End offsets of the valid records in a segment file's bytes.
fn record_ends(data: &[u8]) -> Vec<usize> {
    let mut off = SEGMENT_HEADER_LEN as usize;
    let mut ends = Vec::new();
    while let Decoded::Record { total, .. } = format::decode(&data[off..]) {
        off += total;
        ends.push(off);
    }
    ends
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn round_trip_across_segment_rolls_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    {
        let (s, report) = open(&dir, opts(256));
        assert!(report.created && report.is_clean(), "{report}");
        for i in 1..=100 {
            assert_eq!(s.append_blocking(payload(i)).unwrap(), i);
        }
        let recs = all(&s);
        assert_eq!(recs.len(), 100);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(r.payload, payload(r.seq));
            assert!(r.timestamp_ms > 1_600_000_000_000);
        }
        let mid: Vec<u64> = s.read_from(37, 10).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(mid, (37..47).collect::<Vec<_>>());
        assert!(s.read_from(101, 10).unwrap().is_empty());
        let st = s.stats();
        assert!(st.segments > 5, "{st:?}");
        assert_eq!((st.first_seq, st.last_seq, st.appends), (Some(1), 100, 100));
        assert_eq!(st.segments, seg_files(&dir).len());
        let on_disk: u64 = seg_files(&dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(st.total_bytes, on_disk);
    }
    let (s, report) = open(&dir, opts(256));
    assert!(report.is_clean() && !report.created, "{report}");
    assert_eq!(report.records, 100);
    assert_eq!(s.last_seq(), 100);
    assert_eq!(s.append_blocking(b"after".to_vec()).unwrap(), 101);
    assert_eq!(all(&s).len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    let tmp = tempfile::tempdir().unwrap();
    let (tasks, per_task) = (64u64, 50u64);
    let (s, _) = Spool::open(tmp.path(), opts(64 * 1024)).unwrap();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let seq = s.append(format!("{t}:{i}").into_bytes()).await.unwrap();
                seqs.push((seq, t, i));
            }
            seqs
        }));
    }
    let mut seen = Vec::new();
    for h in handles {
        seen.extend(h.await.unwrap());
    }
    let n = tasks * per_task;
    let unique: HashSet<u64> = seen.iter().map(|x| x.0).collect();
    assert_eq!(unique.len() as u64, n);
    assert_eq!(unique, (1..=n).collect());
    let st = s.stats();
    assert_eq!(st.appends, n);
    assert!(st.fsyncs >= 1 && st.fsyncs <= st.commits, "{st:?}");
    assert!(
        st.fsyncs * 4 < n,
        "group commit did not batch: {} fsyncs for {n} appends",
        st.fsyncs
    );
    eprintln!(
        "group commit: {n} appends, {} commits, {} fsyncs",
        st.commits, st.fsyncs
    );
    drop(s);
    let (s, report) = Spool::open(tmp.path(), opts(64 * 1024)).unwrap();
    assert!(report.is_clean(), "{report}");
    let recs = s.read_from(1, usize::MAX).unwrap();
    assert_eq!(recs.len() as u64, n);
    for (seq, t, i) in seen {
        assert_eq!(
            recs[(seq - 1) as usize].payload,
            format!("{t}:{i}").into_bytes()
        );
    }
}

#[test]
fn memory_durability_does_not_fsync_records() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        durability: Durability::Memory,
        ..opts(4096)
    };
    {
        let (s, _) = open(tmp.path(), o.clone());
        for i in 1..=20 {
            s.append_blocking(payload(i)).unwrap();
        }
        assert_eq!(s.stats().fsyncs, 0);
    }
    let (s, report) = open(tmp.path(), o);
    assert!(report.is_clean());
    assert_eq!(all(&s).len(), 20);
}

#[test]
fn oversize_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(1024));
    let err = s
        .append_blocking(vec![0u8; MAX_RECORD_BYTES + 1])
        .unwrap_err();
    assert!(matches!(err, SpoolError::RecordTooLarge { .. }), "{err}");
    // A record bigger than a segment gets a segment of its own.
    assert_eq!(s.append_blocking(vec![1u8; 10]).unwrap(), 1);
    assert_eq!(s.append_blocking(vec![7u8; 5000]).unwrap(), 2);
    assert_eq!(s.append_blocking(vec![2u8; 10]).unwrap(), 3);
    assert_eq!(all(&s)[1].payload, vec![7u8; 5000]);
}

#[test]
fn cursors_survive_reopen_and_crash_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let (s, _) = open(dir, opts(4096));
        assert_eq!(s.cursor("webhooks").unwrap(), 0);
        for i in 1..=10 {
            s.append_blocking(payload(i)).unwrap();
        }
        s.advance_cursor("webhooks", 7).unwrap();
        s.advance_cursor("webhooks", 3).unwrap(); // behind: no change
        let err = s.advance_cursor("webhooks", 11).unwrap_err();
        assert!(matches!(err, SpoolError::CursorOutOfRange { .. }), "{err}");
        assert!(matches!(
            s.cursor("../etc"),
            Err(SpoolError::InvalidCursorName { .. })
        ));
        assert_eq!(s.cursors(), vec![("webhooks".to_string(), 7)]);
    }
    // A crash in the middle of a cursor write leaves the temp file; another cursor is garbage.
    fs::write(dir.join("webhooks.cursor.tmp"), b"9").unwrap();
    fs::write(dir.join("other.cursor"), b"\xff\x00garbage").unwrap();
    fs::write(dir.join("notes.txt"), b"stray").unwrap();
    let (s, report) = open(dir, opts(4096));
    assert_eq!(
        report.removed_temp_files,
        vec![dir.join("webhooks.cursor.tmp")]
    );
    assert!(!dir.join("webhooks.cursor.tmp").exists());
    assert_eq!(report.bad_cursors.len(), 1);
    assert_eq!(report.bad_cursors[0].0, "other");
    assert_eq!(report.stray_files, vec![dir.join("notes.txt")]);
    assert!(!report.is_clean());
    assert!(
        report.to_string().contains("restarts from the beginning"),
        "{report}"
    );
    assert_eq!(s.cursor("webhooks").unwrap(), 7);
    assert_eq!(s.cursor("other").unwrap(), 0);
    let first_unconsumed = s.read_from(s.cursor("webhooks").unwrap() + 1, 100).unwrap();
    assert_eq!(first_unconsumed.first().map(|r| r.seq), Some(8));
    s.remove_cursor("other").unwrap();
    assert!(!dir.join("other.cursor").exists());
    drop(s);
    let (_s, report) = open(dir, opts(4096));
    assert!(report.bad_cursors.is_empty() && report.removed_temp_files.is_empty());
}

const SWEEP_SEG: u64 = 300;

/// Build a pristine spool of 3 segments and return (dir, last segment path, records before it).
fn pristine(tmp: &Path) -> (PathBuf, PathBuf, u64) {
    let dir = tmp.join("pristine");
    let (s, _) = open(&dir, opts(SWEEP_SEG));
    for i in 1..=20 {
        s.append_blocking(payload(i)).unwrap();
    }
    drop(s);
    let segs = seg_files(&dir);
    assert!(segs.len() >= 3, "{segs:?}");
    let last = segs.last().unwrap().clone();
    let data = fs::read(&last).unwrap();
    let in_last = record_ends(&data).len() as u64;
    assert!(in_last >= 3);
    (dir, last, 20 - in_last)
}

fn check_recovered(dir: &Path, expected: u64, what: &str) {
    let (s, report) = Spool::open(dir, opts(SWEEP_SEG)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(report.records, expected, "{what}: {report}");
    let seqs: Vec<u64> = all(&s).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>(), "{what}");
    for r in all(&s) {
        assert_eq!(r.payload, payload(r.seq), "{what}");
    }
    assert_eq!(
        s.append_blocking(b"next".to_vec()).unwrap(),
        expected + 1,
        "{what}"
    );
}

#[test]
fn torn_write_sweep_cuts_exactly_the_damaged_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, last, before) = pristine(tmp.path());
    let name = last.file_name().unwrap().to_owned();
    let data = fs::read(&last).unwrap();
    let ends = record_ends(&data);
    let start = ends[ends.len() - 4]; // the last three records
    let kept = |off: usize| ends.iter().filter(|e| **e <= off).count() as u64;
    for cut in start..data.len() {
        let dir = tmp.path().join(format!("cut{cut}"));
        copy_dir(&pdir, &dir);
        fs::write(dir.join(&name), &data[..cut]).unwrap();
        let what = format!("cut at {cut}");
        {
            let (_s, report) = open(&dir, opts(SWEEP_SEG));
            let k = kept(cut);
            let boundary = if k == 0 {
                SEGMENT_HEADER_LEN as usize
            } else {
                ends[k as usize - 1]
            };
            assert_eq!(report.truncated_bytes, (cut - boundary) as u64, "{what}");
            assert_eq!(report.is_clean(), cut == boundary, "{what}: {report}");
            if cut > boundary {
                assert_eq!(report.dropped_records, 1, "{what}: {report}");
            }
        }
        check_recovered(&dir, before + kept(cut), &what);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bit_flip_sweep_cuts_exactly_the_damaged_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, last, before) = pristine(tmp.path());
    let name = last.file_name().unwrap().to_owned();
    let data = fs::read(&last).unwrap();
    let ends = record_ends(&data);
    let start = ends[ends.len() - 4];
    let kept = |off: usize| ends.iter().filter(|e| **e <= off).count() as u64;
    for off in start..data.len() {
        let dir = tmp.path().join(format!("flip{off}"));
        copy_dir(&pdir, &dir);
        let mut bad = data.clone();
        bad[off] ^= 1 << (off % 8);
        fs::write(dir.join(&name), &bad).unwrap();
        let what = format!("bit flip at {off}");
        // A read-only reader stops quietly before the damage.
        let reader = SpoolReader::open(&dir).unwrap();
        let seen = reader.read_from(1, usize::MAX).unwrap();
        assert_eq!(seen.len() as u64, before + kept(off), "{what} (reader)");
        {
            let (_s, report) = open(&dir, opts(SWEEP_SEG));
            let k = kept(off) as usize;
            let boundary = if k == 0 {
                SEGMENT_HEADER_LEN as usize
            } else {
                ends[k - 1]
            };
            assert_eq!(
                report.truncated_bytes,
                (data.len() - boundary) as u64,
                "{what}"
            );
            assert!(report.tail_damage.is_some(), "{what}");
        }
        check_recovered(&dir, before + kept(off), &what);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn corrupt_middle_segment_keeps_its_valid_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _, _) = pristine(tmp.path());
    let segs = seg_files(&dir);
    let second = &segs[1];
    let base2 = format::parse_segment_name(second.file_name().unwrap().to_str().unwrap()).unwrap();
    let base3 = format::parse_segment_name(segs[2].file_name().unwrap().to_str().unwrap()).unwrap();
    let mut data = fs::read(second).unwrap();
    let ends = record_ends(&data);
    data[ends[1] + 5] ^= 0x40; // damage the third record of the second segment
    fs::write(second, &data).unwrap();
    // A zero-length segment in the middle and one at the end (crash right after create).
    fs::write(dir.join(format!("{:020}.seg", base2 + 1)), b"").unwrap();
    fs::write(dir.join(format!("{:020}.seg", 21)), b"").unwrap();
    fs::write(dir.join("garbage.seg"), b"hello").unwrap();

    let (s, report) = open(&dir, opts(SWEEP_SEG));
    assert_eq!(report.damaged_segments.len(), 1, "{report}");
    assert_eq!(report.damaged_segments[0].kept_records, 2);
    assert_eq!(report.seq_gaps, vec![(base2 + 2, base3)], "{report}");
    assert_eq!(report.removed_empty_segments.len(), 1, "{report}");
    assert_eq!(report.stray_files, vec![dir.join("garbage.seg")]);
    assert!(report.tail_damage.is_none(), "{report}");
    let seqs: Vec<u64> = all(&s).iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..base2 + 2).chain(base3..=20).collect();
    assert_eq!(seqs, expected);
    // Reading from inside the gap starts at the next record there is.
    assert_eq!(s.read_from(base2 + 2, 1).unwrap()[0].seq, base3);
    assert_eq!(s.append_blocking(b"x".to_vec()).unwrap(), 21);
    let reader = SpoolReader::open(&dir).unwrap();
    let seen: Vec<u64> = reader
        .read_from(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        seen,
        expected.iter().copied().chain([21]).collect::<Vec<_>>()
    );
}

#[test]
fn garbage_last_segment_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let (s, _) = open(dir, opts(4096));
        for i in 1..=3 {
            s.append_blocking(payload(i)).unwrap();
        }
    }
    let seg = seg_files(dir)[0].clone();
    fs::write(&seg, b"this is not a segment at all").unwrap();
    let (s, report) = open(dir, opts(4096));
    assert_eq!(report.quarantined.len(), 1, "{report}");
    assert!(report.quarantined[0].exists());
    assert!(all(&s).is_empty());
    assert_eq!(s.append_blocking(b"x".to_vec()).unwrap(), 1);
}

#[test]
fn lost_tail_behind_a_cursor_continues_after_the_cursor() {
    // Memory durability + power cut: the consumer had already passed records that are gone.
    let tmp = tempfile::tempdir().unwrap();
    {
        let (s, _) = open(tmp.path(), opts(4096));
        for i in 1..=5 {
            s.append_blocking(payload(i)).unwrap();
        }
        s.advance_cursor("jobs", 5).unwrap();
    }
    let seg = seg_files(tmp.path())[0].clone();
    let data = fs::read(&seg).unwrap();
    fs::write(&seg, &data[..record_ends(&data)[2]]).unwrap(); // keep records 1..=3
    let (s, report) = open(tmp.path(), opts(4096));
    assert_eq!(report.seq_gaps, vec![(4, 6)], "{report}");
    assert_eq!(
        s.append_blocking(b"new".to_vec()).unwrap(),
        6,
        "never hand out a consumed seq"
    );
    assert_eq!(s.read_from(6, 10).unwrap()[0].payload, b"new".to_vec());
}

#[test]
fn not_a_directory_and_missing_dir_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = Spool::open(&file, SpoolOptions::default()).err().unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = SpoolReader::open(tmp.path().join("nope")).err().unwrap();
    assert!(matches!(err, SpoolError::NotFound { .. }), "{err}");
}

#[test]
fn retention_deletes_only_fully_consumed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(256));
    s.cursor("a").unwrap();
    s.cursor("b").unwrap();
    for i in 1..=60 {
        s.append_blocking(payload(i)).unwrap();
    }
    let before = s.stats();
    assert_eq!(
        before.first_seq,
        Some(1),
        "nothing consumed yet, nothing retired"
    );
    s.advance_cursor("a", 40).unwrap();
    assert_eq!(s.stats().first_seq, Some(1), "b still needs everything");
    s.advance_cursor("b", 15).unwrap();
    let first = s.stats().first_seq.unwrap();
    assert!(first > 1 && first <= 16, "first remaining seq {first}");
    // Everything from b's position on is still readable.
    assert_eq!(s.read_from(16, 100).unwrap().len(), 45);
    assert_eq!(s.read_from(1, 1).unwrap()[0].seq, first);
    s.advance_cursor("a", 60).unwrap();
    s.advance_cursor("b", 60).unwrap();
    let st = s.stats();
    assert_eq!(st.segments, 1, "only the active segment remains: {st:?}");
    assert_eq!(st.segments, seg_files(tmp.path()).len());
    assert_eq!(st.last_seq, 60);
    assert_eq!(s.append_blocking(b"x".to_vec()).unwrap(), 61);
}

#[test]
fn size_and_age_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        retain_bytes: Some(1024),
        ..opts(256)
    };
    let (s, _) = open(&tmp.path().join("size"), o);
    for i in 1..=100 {
        s.append_blocking(payload(i)).unwrap();
    }
    let st = s.stats();
    assert!(st.total_bytes <= 1024 + 256, "{st:?}");
    assert!(st.first_seq.unwrap() > 1);
    assert_eq!(st.last_seq, 100);

    let o = SpoolOptions {
        retain_age: Some(Duration::from_millis(300)),
        durability: Durability::Memory, // fast appends: nothing may age during them
        ..opts(256)
    };
    let (s, _) = open(&tmp.path().join("age"), o);
    for i in 1..=30 {
        s.append_blocking(payload(i)).unwrap();
    }
    assert_eq!(
        s.run_retention().unwrap().deleted_records,
        0,
        "nothing is old yet"
    );
    std::thread::sleep(Duration::from_millis(350));
    let r = s.run_retention().unwrap();
    assert!(r.deleted_records > 0 && r.freed_bytes > 0, "{r:?}");
    let st = s.stats();
    assert_eq!(st.segments, 1, "{st:?}");
    assert!(st.oldest_timestamp_ms.is_some());
}

#[test]
fn disk_cap_refuses_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        max_bytes: Some(600),
        ..opts(256)
    };
    let (s, _) = open(tmp.path(), o.clone());
    s.cursor("jobs").unwrap();
    let mut n = 0;
    let err = loop {
        match s.append_blocking(payload(n + 1)) {
            Ok(seq) => n = seq,
            Err(e) => break e,
        }
        assert!(n < 100);
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(err.to_string().contains("spool.max_bytes"), "{err}");
    let st = s.stats();
    assert!(st.total_bytes <= 600 && st.last_seq == n, "{st:?}");
    // Raising the cap lets appends through again.
    s.set_max_bytes(Some(800));
    assert_eq!(s.append_blocking(payload(n + 1)).unwrap(), n + 1);
    n += 1;
    // So does a consumer catching up (segments are retired).
    let err = loop {
        match s.append_blocking(payload(n + 1)) {
            Ok(seq) => n = seq,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::Full { .. }));
    s.advance_cursor("jobs", n).unwrap();
    assert_eq!(s.append_blocking(payload(n + 1)).unwrap(), n + 1);
    drop(s);
    let (s, report) = open(tmp.path(), o);
    assert!(report.is_clean(), "{report}");
    assert_eq!(s.last_seq(), n + 1);
}

#[test]
fn enospc_mid_write_is_cut_back_and_the_spool_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(4096));
    assert_eq!(s.append_blocking(payload(1)).unwrap(), 1);
    let seg = seg_files(tmp.path())[0].clone();
    let len = fs::metadata(&seg).unwrap().len();
    s.shared()
        .inject_enospc
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = s.append_blocking(payload(2)).unwrap_err();
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("Free space"), "{err}");
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        len,
        "partial write was cut back"
    );
    assert_eq!(
        s.append_blocking(payload(2)).unwrap(),
        2,
        "the seq is reused"
    );
    assert_eq!(all(&s).len(), 2);
    drop(s);
    let (s, report) = open(tmp.path(), opts(4096));
    assert!(report.is_clean(), "{report}");
    assert_eq!(all(&s).len(), 2);
}

#[test]
fn second_writer_is_locked_out_and_a_reader_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(256));
    let err = Spool::open(tmp.path(), opts(256)).err().unwrap();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("another pushbox is using"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&tmp.path().display().to_string()),
        "{err}"
    );

    let reader = Spool::open_read_only(tmp.path()).unwrap();
    assert!(reader.read_from(1, 10).unwrap().is_empty());
    for i in 1..=5 {
        s.append_blocking(payload(i)).unwrap();
    }
    s.cursor("webhooks").unwrap();
    s.advance_cursor("webhooks", 2).unwrap();
    let got = reader.read_from(1, 10).unwrap();
    assert_eq!(got.len(), 5);
    // Follow: keep reading from after the last seen record, across segment rolls.
    let mut next = 6;
    for i in 6..=40 {
        s.append_blocking(payload(i)).unwrap();
        if i % 7 == 0 {
            for r in reader.read_from(next, 1000).unwrap() {
                assert_eq!(r.seq, next);
                assert_eq!(r.payload, payload(r.seq));
                next += 1;
            }
        }
    }
    next += reader.read_from(next, 1000).unwrap().len() as u64;
    assert_eq!(next, 41);
    assert_eq!(reader.cursors().unwrap(), vec![("webhooks".to_string(), 2)]);
    let st = reader.stats().unwrap();
    assert_eq!((st.first_seq, st.last_seq), (Some(1), 40));
    assert_eq!(st.total_bytes, s.stats().total_bytes);
    // The lock goes with the spool.
    drop(s);
    let (_s, report) = open(tmp.path(), opts(256));
    assert!(report.is_clean(), "{report}");
}

#[tokio::test]
async fn waiters_wake_on_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(tmp.path(), opts(4096)).unwrap();
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for(3).await })
    };
    for i in 1..=3 {
        s.append(payload(i)).await.unwrap();
    }
    let last = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.unwrap(), 3);
    let mut rx = s.subscribe();
    assert_eq!(*rx.borrow_and_update(), 3);
    s.append(b"4".to_vec()).await.unwrap();
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow(), 4);
}

#[test]
fn detached_appends_are_committed_and_a_failed_write_makes_callers_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(4096));
    for i in 0..100u64 {
        assert_eq!(s.append_detached(payload(i)).unwrap(), None, "queued");
    }
    // The writer commits them in order; an awaited append lands after them.
    assert_eq!(s.append_blocking(payload(200)).unwrap(), 101);
    assert_eq!(all(&s).len(), 101);
    // After a failed write the next detached append is handed back: its caller must wait
    // for the outcome (and answer 503 if the disk is still full).
    s.shared()
        .inject_enospc
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(s.append_blocking(payload(1)).is_err());
    let back = s.append_detached(payload(7)).unwrap();
    assert_eq!(back, Some(payload(7)));
    assert_eq!(s.append_blocking(payload(7)).unwrap(), 102);
    assert_eq!(
        s.append_detached(payload(8)).unwrap(),
        None,
        "a good write clears it"
    );
    drop(s);
    let (s, report) = open(tmp.path(), opts(4096));
    assert!(report.is_clean(), "{report}");
    assert_eq!(all(&s).len(), 103);
}

fn reserving(segment_bytes: u64, reserve_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        reserve_bytes,
        ..opts(segment_bytes)
    }
}

#[test]
fn room_is_reserved_past_the_end_without_changing_the_length() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), reserving(1 << 20, 64 * 1024));
    s.append_blocking(payload(1)).unwrap();
    let seg = seg_files(tmp.path())[0].clone();
    let m = fs::metadata(&seg).unwrap();
    assert_eq!(m.len(), s.stats().total_bytes, "the length is the records'");
    if m.blocks() * 512 < 64 * 1024 {
        println!("SKIPPED: this filesystem does not reserve with fallocate");
        return;
    }
    assert_eq!(s.condition(), Condition::Writable);
    drop(s);
    let (s, report) = open(tmp.path(), reserving(1 << 20, 64 * 1024));
    assert!(
        report.is_clean(),
        "reserved blocks are not a torn tail: {report}"
    );
    assert_eq!(all(&s).len(), 1);
}

#[test]
fn the_next_segment_is_started_before_a_record_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Chunks of 4 KiB (a quarter segment): a new segment once less than 2 KiB is left.
    let (s, _) = open(tmp.path(), reserving(16 * 1024, 1 << 20));
    let mut n = 0;
    while seg_files(tmp.path()).len() < 2 {
        n += 1;
        s.append_blocking(payload(n)).unwrap();
        assert!(n < 1000, "no second segment");
    }
    let first = fs::metadata(&seg_files(tmp.path())[0]).unwrap().len();
    assert!(first > 14 * 1024 && first <= 16 * 1024, "{first}");
    for i in n + 1..=n + 50 {
        s.append_blocking(payload(i)).unwrap();
    }
    assert_eq!(all(&s).len() as u64, n + 50);
    drop(s);
    let (s, report) = open(tmp.path(), reserving(16 * 1024, 1 << 20));
    assert!(report.is_clean(), "{report}");
    assert_eq!(all(&s).len() as u64, n + 50);
}

#[test]
fn a_removed_or_replaced_directory_refuses_every_record_for_good() {
    for replace in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        let (s, _) = open(&dir, reserving(1 << 20, 64 * 1024));
        s.append_blocking(payload(1)).unwrap();
        s.check_directory().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        if replace {
            fs::create_dir(&dir).unwrap();
        }
        let err = s.check_directory().unwrap_err();
        assert!(matches!(err, SpoolError::DirectoryLost { .. }), "{err}");
        assert!(err.to_string().contains("Restart pushbox"), "{err}");
        assert_eq!(s.condition(), Condition::DirectoryLost);
        assert!(s.refusal().is_some());
        let err = s.append_blocking(payload(2)).unwrap_err();
        assert!(matches!(err, SpoolError::DirectoryLost { .. }), "{err}");
        assert_eq!(s.append_detached(payload(3)).unwrap(), Some(payload(3)));
        assert_eq!(s.condition(), Condition::DirectoryLost, "stays lost");
    }
}

#[test]
fn a_segment_deleted_under_the_writer_is_a_lost_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), reserving(1 << 20, 64 * 1024));
    s.append_blocking(payload(1)).unwrap();
    fs::remove_file(&seg_files(tmp.path())[0]).unwrap();
    let err = s.check_directory().unwrap_err();
    assert!(err.to_string().contains("was deleted"), "{err}");
}

#[test]
fn records_handed_over_are_the_written_ones_and_a_clean_stop_leaves_no_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SpoolOptions {
        durability: Durability::Memory,
        ..opts(8 * 1024)
    };
    let (s, _) = open(tmp.path(), o);
    for i in 1..=5 {
        s.append_blocking(payload(i)).unwrap();
    }
    assert_eq!(s.read_recent(1, 10), None, "nothing kept before hand_over");
    s.hand_over();
    // More than the 1,024 kept, in batches (detached appends queue up), across segment rolls.
    let total = 5 + 1100;
    for i in 6..=total {
        assert_eq!(
            s.append_detached(payload(i)).unwrap(),
            None,
            "queue has room"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.last_seq() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "appends not committed in 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(s.stats().segments > 1, "the records span segments");
    let oldest_kept = total - 1023;
    assert_eq!(
        s.read_recent(oldest_kept - 1, 10),
        None,
        "older ones are read from the file"
    );
    let recent = s.read_recent(oldest_kept, usize::MAX).unwrap();
    assert_eq!(recent, s.read_from(oldest_kept, usize::MAX).unwrap());
    assert_eq!(recent.len(), 1024);
    assert_eq!(
        s.read_recent(total - 9, 4).unwrap(),
        s.read_from(total - 9, 4).unwrap()
    );
    assert_eq!(s.read_recent(total + 1, 10), None);
    assert_eq!(s.last_handed(), total);
    // The floor on disk is above every seq handed over...
    let floor = floor::read(tmp.path()).unwrap().expect("a floor was saved");
    assert!(floor > total, "floor {floor} above {total}");
    // ...and a clean stop, with all of them synced, sets it back: no gap at the next start.
    drop(s);
    assert_eq!(floor::read(tmp.path()).unwrap(), Some(total + 1));
    let (s, report) = open(tmp.path(), opts(8 * 1024));
    assert!(report.is_clean(), "{report}");
    assert_eq!(s.append_blocking(payload(0)).unwrap(), total + 1);
}

#[test]
fn a_batch_that_fails_after_it_was_handed_over_gives_up_its_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(8 * 1024));
    s.hand_over();
    let fail_next_fsync = |s: &Spool| {
        s.shared()
            .inject_fsync_error
            .store(true, std::sync::atomic::Ordering::SeqCst);
    };
    // The very first record fails: its segment (empty) is replaced by one past the seq.
    fail_next_fsync(&s);
    let err = s.append_blocking(payload(1)).unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    assert_eq!(
        s.read_recent(1, 10).unwrap()[0].payload,
        payload(1),
        "it was handed over"
    );
    assert_eq!(
        s.append_blocking(payload(2)).unwrap(),
        2,
        "seq 1 is not reused"
    );
    assert_eq!(s.append_blocking(payload(3)).unwrap(), 3);
    // One in the middle of a segment: the next record starts a new segment after it.
    fail_next_fsync(&s);
    assert!(s.append_blocking(payload(4)).is_err());
    assert_eq!(
        s.append_blocking(payload(5)).unwrap(),
        5,
        "seq 4 is not reused"
    );
    let seqs = |s: &Spool| all(s).iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&s), vec![2, 3, 5]);
    let recent: Vec<u64> = s
        .read_recent(1, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        recent,
        vec![1, 2, 3, 4, 5],
        "the consumer saw every record handed over"
    );
    assert_eq!(s.read_recent(4, 1).unwrap()[0].seq, 4);
    assert_eq!(
        seg_files(tmp.path()).len(),
        2,
        "no header-only segment was left for seq 1"
    );
    drop(s);
    let (s, report) = open(tmp.path(), opts(8 * 1024));
    assert_eq!(seqs(&s), vec![2, 3, 5]);
    assert_eq!(report.seq_gaps, vec![(4, 5)], "{report}");
    assert_eq!(s.append_blocking(payload(6)).unwrap(), 6);
}

#[test]
fn a_crash_after_hand_over_never_gives_a_lost_seq_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), opts(64 * 1024));
    s.hand_over();
    for i in 1..=3 {
        assert_eq!(s.append_blocking(payload(i)).unwrap(), i);
    }
    // A crash: the files as they are now (no clean stop), and record 3 never reached the disk
    // (power went before its fsync finished; it had been handed over).
    let other = tempfile::tempdir().unwrap();
    let crashed = other.path().join("crashed");
    copy_dir(tmp.path(), &crashed);
    let seg = seg_files(&crashed)[0].clone();
    let data = fs::read(&seg).unwrap();
    let ends = record_ends(&data);
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(ends[1] as u64)
        .unwrap();
    let floor = 2 + floor::STEP;
    assert_eq!(floor::read(&crashed).unwrap(), Some(floor));
    let (c, report) = open(&crashed, opts(64 * 1024));
    assert_eq!(report.skipped_seqs, Some((3, floor)), "{report}");
    assert!(!report.is_clean());
    assert!(report.to_string().contains("not reused"), "{report}");
    assert_eq!(
        c.append_blocking(payload(9)).unwrap(),
        floor,
        "3 is never given again"
    );
    let seqs: Vec<u64> = all(&c).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, floor]);
    drop(c);

    // A floor file that cannot be read stops the open with what to do; a bare number is taken.
    fs::write(crashed.join(floor::FILE), "garbage").unwrap();
    let err = Spool::open(&crashed, opts(64 * 1024))
        .err()
        .expect("refused");
    assert!(matches!(err, SpoolError::BadFloor { .. }), "{err}");
    assert!(err.to_string().contains("Write one number"), "{err}");
    fs::write(crashed.join(floor::FILE), format!("{}\n", floor + 100)).unwrap();
    let (c, report) = open(&crashed, opts(64 * 1024));
    assert_eq!(
        report.skipped_seqs,
        Some((floor + 1, floor + 100)),
        "{report}"
    );
    assert_eq!(c.append_blocking(payload(10)).unwrap(), floor + 100);
}

/// A segment file holding `records` (seq, payload), each framed with a correct CRC.
fn write_segment(dir: &Path, base: u64, records: &[(u64, &[u8])]) {
    let mut buf = format::SEGMENT_MAGIC.to_vec();
    for (seq, p) in records {
        format::encode_record(&mut buf, *seq, 1_764_000_000_000, p);
    }
    fs::create_dir_all(dir).unwrap();
    fs::write(format::segment_path(dir, base), buf).unwrap();
}

/// Found by `fuzz/fuzz_targets/spool.rs`: a segment named `u64::MAX` (or a record claiming
/// seq `u64::MAX`) overflowed the next seq, a panic in the writer thread and in the reader.
/// Such a record is damage; a spool whose next seq would pass `MAX_SEQ` refuses appends
/// with a message, and opens again.
#[test]
fn seq_at_the_end_of_the_range_is_damage_not_an_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    write_segment(&dir, 1, &[(1, b"one"), (2, b"two")]);
    write_segment(&dir, MAX_SEQ, &[(MAX_SEQ, b"last"), (u64::MAX, b"past")]);
    let reader = Spool::open_read_only(&dir).unwrap();
    let seqs: Vec<u64> = reader
        .read_from(1, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2, MAX_SEQ], "the reader stops before u64::MAX");
    drop(reader);

    let (s, report) = open(&dir, opts(4096));
    let d = report
        .tail_damage
        .as_ref()
        .expect("the u64::MAX record is cut");
    assert_eq!(d.reason, "sequence number out of range", "{report}");
    let seqs: Vec<u64> = all(&s).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, MAX_SEQ]);
    let e = s.append_blocking(b"more".to_vec()).unwrap_err();
    assert!(matches!(e, SpoolError::SeqExhausted { .. }), "{e}");
    assert!(e.to_string().contains("move the directory aside"), "{e}");
    drop(s);
    let (s, again) = open(&dir, opts(4096));
    assert!(again.tail_damage.is_none(), "nothing more is cut: {again}");
    assert_eq!(all(&s).len(), 3);

    // An empty segment named u64::MAX: nothing fits in it.
    let dir = tmp.path().join("t");
    write_segment(&dir, u64::MAX, &[]);
    let (s, _) = open(&dir, opts(4096));
    let e = s.append_blocking(b"x".to_vec()).unwrap_err();
    assert!(matches!(e, SpoolError::SeqExhausted { .. }), "{e}");
}

/// Found by `fuzz/fuzz_targets/spool.rs`: when a segment's records run past the next
/// segment's base (a mangled or copied file), recovery stops that segment at the base, but the
/// read-only reader (`pushbox events tail`) read on and returned seqs twice and out of order.
/// Both now read the same records.
#[test]
fn overlapping_segments_read_the_same_in_the_reader_and_after_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    write_segment(&dir, 1, &[(1, b"a1"), (2, b"a2"), (3, b"a3"), (4, b"a4")]);
    write_segment(&dir, 3, &[(3, b"b3"), (4, b"b4"), (5, b"b5")]);
    let reader = Spool::open_read_only(&dir).unwrap();
    let read = reader.read_from(1, 100).unwrap();
    let got: Vec<(u64, &[u8])> = read.iter().map(|r| (r.seq, &r.payload[..])).collect();
    let want: Vec<(u64, &[u8])> = vec![(1, b"a1"), (2, b"a2"), (3, b"b3"), (4, b"b4"), (5, b"b5")];
    assert_eq!(
        got, want,
        "the reader stops a segment at the next one's base"
    );
    drop(reader);
    // With an empty segment at 3 instead, the reader's stats end at 2, not at 4.
    let other = tmp.path().join("t");
    write_segment(&other, 1, &[(1, b"a1"), (2, b"a2"), (3, b"a3"), (4, b"a4")]);
    write_segment(&other, 3, &[]);
    let stats = Spool::open_read_only(&other).unwrap().stats().unwrap();
    assert_eq!((stats.first_seq, stats.last_seq), (Some(1), 2));
    let (s, report) = open(&dir, opts(4096));
    assert_eq!(report.damaged_segments.len(), 1, "{report}");
    assert_eq!(all(&s), read, "recovery keeps what the reader read");
}

/// Found by `fuzz/fuzz_targets/spool.rs`: records of a segment that run past the next
/// segment's base are damage, but when recovery then moved that next segment aside (a foreign
/// header) or removed it (an empty last segment), the next open took them back, or the writer
/// appended over them and left old records behind the new ones. Recovery now cuts them, so a
/// second open finds exactly what the first kept plus what was appended.
#[test]
fn records_cut_at_a_removed_segment_do_not_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let seqs = |s: &Spool| all(s).iter().map(|r| r.seq).collect::<Vec<u64>>();
    let overlapping: &[(u64, &[u8])] = &[(14, b"r14"), (15, b"r15"), (16, b"r16")];

    // An empty segment after it, then a foreign file: the empty one is removed.
    let dir = tmp.path().join("removed");
    write_segment(&dir, 14, overlapping);
    write_segment(&dir, 15, &[]);
    fs::write(format::segment_path(&dir, 100), b"........not a segment").unwrap();
    let (s, report) = open(&dir, opts(4096));
    assert_eq!(seqs(&s), [14], "{report}");
    assert_eq!(s.append_blocking(b"new".to_vec()).unwrap(), 100);
    drop(s);
    let (s, again) = open(&dir, opts(4096));
    assert_eq!(seqs(&s), [14, 100], "nothing revived: {again}");
    drop(s);

    // The foreign file right after it: the writer continues in the damaged segment.
    let dir = tmp.path().join("reused");
    write_segment(&dir, 14, overlapping);
    fs::write(format::segment_path(&dir, 15), b"........not a segment").unwrap();
    let (s, report) = open(&dir, opts(4096));
    assert_eq!(seqs(&s), [14], "{report}");
    assert_eq!(s.append_blocking(b"NEW".to_vec()).unwrap(), 15);
    drop(s);
    let (s, again) = open(&dir, opts(4096));
    let got: Vec<(u64, Vec<u8>)> = all(&s).into_iter().map(|r| (r.seq, r.payload)).collect();
    assert_eq!(
        got,
        [(14, b"r14".to_vec()), (15, b"NEW".to_vec())],
        "the old record 16 is not read after the new 15: {again}"
    );
}
