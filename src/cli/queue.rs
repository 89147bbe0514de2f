//! `pushbox queue status|dead|retry`: the webhook queue, safe against a running server.
//!
//! `status` and `dead` only read the spools (`SpoolReader`: no lock, no changes). `retry`
//! never makes a second writer: it requeues directly only when it can take the webhook
//! spool's lock (no server running), and otherwise hands a request file to the running server
//! and waits for its answer (see `webhooks::requeue`).

use std::process::ExitCode;
use std::time::Duration;

use super::{config_failure, load_config, ConfigArgs};
use crate::config::Config;
use crate::spool::{Spool, SpoolError, SpoolReader};
use crate::webhooks::job::{live_dead_letters, DeadLetter, Job};
use crate::webhooks::requeue::{self, Request};
use crate::webhooks::{self, WebhookError};

/// Exit status when a running server has not answered a retry request yet (EX_TEMPFAIL).
const EXIT_PENDING: u8 = 75;

/// How long `retry` waits for a running server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `1d 2h`, `5m 12s`, `3.2s`, `120ms`.
pub fn fmt_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn open_reader(dir: &std::path::Path) -> Result<Option<SpoolReader>, SpoolError> {
    match Spool::open_read_only(dir) {
        Ok(r) => Ok(Some(r)),
        Err(SpoolError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What `status` reports.
struct Status {
    pending: u64,
    oldest: Option<Job>,
    dead: usize,
    /// The webhook bodies waiting to be sent (what a receiver will get), in bytes.
    pending_bytes: u64,
    /// The webhook bodies of the live dead letters, in bytes.
    dead_letter_bytes: u64,
    /// The spool files on disk (record headers and segment files included).
    disk_bytes: u64,
}

fn read_status(cfg: &Config) -> Result<Status, WebhookError> {
    let mut st = Status {
        pending: 0,
        oldest: None,
        dead: 0,
        pending_bytes: 0,
        dead_letter_bytes: 0,
        disk_bytes: 0,
    };
    if let Some(q) = open_reader(&webhooks::queue_dir(&cfg.state_dir))? {
        let cursor = q
            .cursors()?
            .into_iter()
            .find(|(n, _)| n == webhooks::CURSOR)
            .map_or(0, |(_, v)| v);
        let mut next = cursor + 1;
        loop {
            let batch = q.read_from(next, 1024)?;
            let Some(last) = batch.last() else { break };
            next = last.seq + 1;
            for r in &batch {
                if let Some(j) = Job::decode(&r.payload) {
                    st.pending += 1;
                    st.pending_bytes += j.body.len() as u64;
                    if st
                        .oldest
                        .as_ref()
                        .is_none_or(|o| j.created_ms < o.created_ms)
                    {
                        st.oldest = Some(j);
                    }
                }
            }
        }
        st.disk_bytes += q.stats()?.total_bytes;
    }
    if let Some(d) = open_reader(&webhooks::dead_dir(&cfg.state_dir))? {
        let live = live_dead_letters(&requeue::read_reader(&d)?);
        st.dead = live.len();
        st.dead_letter_bytes = live.iter().map(|l| l.job.body.len() as u64).sum();
        st.disk_bytes += d.stats()?.total_bytes;
    }
    Ok(st)
}

/// `pushbox queue status`: depth, oldest age, dead letters, disk use.
pub fn status(args: &ConfigArgs) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(e) => return config_failure(e),
    };
    let st = match read_status(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = webhooks::now_ms();
    println!(
        "webhook queue {}",
        webhooks::queue_dir(&cfg.state_dir).display()
    );
    println!("  pending batches: {}", st.pending);
    match &st.oldest {
        Some(j) => println!(
            "  oldest pending:  {} (batch {}, app {}, {})",
            fmt_age(now.saturating_sub(j.created_ms)),
            j.id,
            j.app,
            j.url
        ),
        None => println!("  oldest pending:  -"),
    }
    println!(
        "  dead letters:    {}{}",
        st.dead,
        if st.dead > 0 {
            " (`pushbox queue dead` lists them, `pushbox queue retry --all` requeues them)"
        } else {
            ""
        }
    );
    println!(
        "  queued bytes:    {} pending, {} in dead letters (webhook bodies)",
        st.pending_bytes, st.dead_letter_bytes
    );
    println!(
        "  disk use:        {} bytes of spool files (cap spool.max_bytes = {})",
        st.disk_bytes, cfg.spool.max_bytes
    );
    ExitCode::SUCCESS
}

fn read_dead(cfg: &Config) -> Result<Vec<DeadLetter>, WebhookError> {
    match open_reader(&webhooks::dead_dir(&cfg.state_dir))? {
        Some(d) => Ok(live_dead_letters(&requeue::read_reader(&d)?)),
        None => Ok(Vec::new()),
    }
}

/// `pushbox queue dead`: one line per dead letter.
pub fn dead(args: &ConfigArgs) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(e) => return config_failure(e),
    };
    let dead = match read_dead(&cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    if dead.is_empty() {
        println!("no dead letters");
        return ExitCode::SUCCESS;
    }
    let now = webhooks::now_ms();
    println!("ID\tAPP\tURL\tEVENTS\tAGE\tATTEMPTS\tLAST ERROR");
    for d in &dead {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            d.job.id,
            d.job.app,
            d.job.url,
            d.job.events,
            fmt_age(now.saturating_sub(d.job.created_ms)),
            d.attempts,
            d.last_error
        );
    }
    println!(
        "{} dead letter(s); `pushbox queue retry ID` or `pushbox queue retry --all` requeues them",
        dead.len()
    );
    ExitCode::SUCCESS
}

/// `pushbox queue retry ID|--all`.
pub fn retry(args: &ConfigArgs, id: Option<&str>, all: bool) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(e) => return config_failure(e),
    };
    let req = match (id, all) {
        (Some(_), true) => {
            eprintln!("pushbox: give either a dead letter id or --all, not both");
            return ExitCode::from(2);
        }
        (None, false) => {
            eprintln!(
                "pushbox: give a dead letter id (see `pushbox queue dead`) or --all to requeue \
                 every dead letter"
            );
            return ExitCode::from(2);
        }
        (id, all) => Request {
            id: id.map(str::to_owned),
            all,
        },
    };
    match requeue::retry(&cfg, &req, ANSWER_TIMEOUT) {
        Ok(requeue::Retried::Done(n)) => {
            println!("requeued {n} dead letter(s)");
            ExitCode::SUCCESS
        }
        Ok(requeue::Retried::Pending(path)) => {
            eprintln!(
                "pushbox: the running server has not answered within {} s; the request stays in \
                 {} and is handled as soon as the server looks (check `pushbox queue status`)",
                ANSWER_TIMEOUT.as_secs(),
                path.display()
            );
            ExitCode::from(EXIT_PENDING)
        }
        Err(e) => {
            eprintln!("pushbox: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_age;

    #[test]
    fn ages() {
        assert_eq!(fmt_age(120), "120ms");
        assert_eq!(fmt_age(3_250), "3.2s");
        assert_eq!(fmt_age(312_000), "5m 12s");
        assert_eq!(fmt_age(7_260_000), "2h 1m");
        assert_eq!(fmt_age(93_600_000), "1d 2h");
    }
}
