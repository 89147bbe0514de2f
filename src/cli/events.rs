//! `pushbox events tail [--channel C] [-n N] [--follow]`: what the shop published, when, and to
//! how many sockets — read from the event log while the server runs (read-only, no lock).

use std::process::ExitCode;
use std::time::Duration;

use super::ConfigArgs;
use crate::date;
use crate::eventlog::{self, EventRecord};
use crate::spool::{Record, Spool, SpoolReader};

/// How far back `--channel` scans for matches.
const SCAN_WINDOW: u64 = 100_000;

pub fn tail(config: &ConfigArgs, channel: Option<&str>, lines: usize, follow: bool) -> ExitCode {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(e) => return super::config_failure(e),
    };
    let dir = eventlog::dir(&cfg.state_dir);
    if !dir.exists() {
        eprintln!("pushbox: no event log at {} yet: start pushbox (it creates the log) or check PUSHBOX_STATE_DIR", dir.display());
        return ExitCode::from(1);
    }
    let reader = match Spool::open_read_only(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::from(1);
        }
    };
    match run(&reader, channel, lines, follow, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushbox: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(
    reader: &SpoolReader,
    channel: Option<&str>,
    lines: usize,
    follow: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), String> {
    let stats = reader.stats().map_err(|e| e.to_string())?;
    let last = stats.last_seq;
    let first = stats.first_seq.unwrap_or(last + 1);
    let start = match channel {
        None => last
            .saturating_sub(lines as u64)
            .saturating_add(1)
            .max(first),
        Some(_) => last.saturating_sub(SCAN_WINDOW).max(first),
    };
    let mut shown: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut next = start;
    loop {
        let batch = reader.read_from(next, 1000).map_err(|e| e.to_string())?;
        let Some(end) = batch.last().map(|r| r.seq) else {
            break;
        };
        for r in &batch {
            if let Some(line) = format_record(r, channel) {
                shown.push_back(line);
                if shown.len() > lines {
                    shown.pop_front();
                }
            }
        }
        next = end + 1;
    }
    for l in shown {
        writeln!(out, "{l}").map_err(|e| e.to_string())?;
    }
    if !follow {
        return Ok(());
    }
    out.flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let batch = reader.read_from(next, 1000).map_err(|e| e.to_string())?;
        for r in &batch {
            if let Some(line) = format_record(r, channel) {
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
            }
            next = r.seq + 1;
        }
        out.flush().map_err(|e| e.to_string())?;
    }
}

/// One line per event: time, app, event name, channels with sockets reached, data.
pub fn format_record(r: &Record, channel: Option<&str>) -> Option<String> {
    let Ok(e) = serde_json::from_slice::<EventRecord>(&r.payload) else {
        if channel.is_some() {
            return None;
        }
        return Some(format!(
            "{} #{} (unreadable record: {} bytes)",
            date::rfc3339(r.timestamp_ms),
            r.seq,
            r.payload.len()
        ));
    };
    if let Some(c) = channel {
        if !e.channels.iter().any(|x| x == c) {
            return None;
        }
    }
    let targets: Vec<String> = e
        .channels
        .iter()
        .zip(e.delivered.iter().chain(std::iter::repeat(&0)))
        .map(|(c, n)| format!("{c}→{n}"))
        .collect();
    let mut data: String = e.data.chars().take(200).collect();
    if e.data.chars().count() > 200 {
        data.push('…');
    }
    let data = data.replace(['\n', '\r'], " ");
    Some(format!(
        "{} app={} {} [{}] {}",
        date::rfc3339(r.timestamp_ms),
        e.app,
        e.name,
        targets.join(" "),
        data
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_channel_filter() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), Default::default()).unwrap();
        for i in 0..30 {
            let rec = EventRecord {
                app: "1".into(),
                name: format!("e{i}"),
                channels: vec![if i % 3 == 0 {
                    "orders".into()
                } else {
                    "other".into()
                }],
                data: format!("{{\"i\":{i}}}\nx"),
                socket_id: None,
                delivered: vec![i],
                positions: Vec::new(),
            };
            spool
                .append_blocking(serde_json::to_vec(&rec).unwrap())
                .unwrap();
        }
        spool.append_blocking(b"not json".to_vec()).unwrap();
        let reader = Spool::open_read_only(dir.path()).unwrap();
        let mut out = Vec::new();
        run(&reader, None, 3, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("e28") && lines[0].contains("other→28"),
            "{}",
            lines[0]
        );
        assert!(lines[2].contains("unreadable record"));
        let mut out = Vec::new();
        run(&reader, Some("orders"), 2, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(" e24 ") && text.contains(" e27 ") && text.contains("orders→27"));
        assert!(!text.contains("\\n") && text.lines().all(|l| !l.is_empty()));
    }
}
