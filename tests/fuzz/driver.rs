//! The fuzzing driver every target shares: a seeded generator, byte and token mutations of
//! valid inputs, the budget (iterations and seconds) read from the environment, and the
//! counters a target keeps to show how deep its inputs went.
//!
//! Beside `cargo fuzz` (`fuzz/`, `scripts/fuzz.sh`, nightly only): this driver runs on stable
//! in every `cargo test`, reruns the same inputs for the same seed, and checks invariants that
//! need a model of valid inputs (decode ∘ encode = id, exactly the intact spool records). The
//! cargo-fuzz targets include `message.rs` and this file for the session checks.
//!
//! Environment (all optional):
//! - `FUZZ_SEED`: the base seed (default [`DEFAULT_SEED`]); each iteration derives its own.
//! - `FUZZ_ITERS`: iterations per target (default: the target's own count).
//! - `FUZZ_SECS`: seconds per target (default [`DEFAULT_SECS`]).
//!
//! Setting only one of `FUZZ_ITERS` / `FUZZ_SECS` lifts the other bound, so
//! `FUZZ_SECS=600 cargo test --test fuzz` runs each target for ten minutes.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The seed CI uses: the same inputs on every run.
pub const DEFAULT_SEED: u64 = 0x5EED_2026_1205_0019;
/// Seconds per target in CI: five targets stay well under half a minute.
pub const DEFAULT_SECS: f64 = 3.0;

/// SplitMix64: tiny, fast, and every seed gives a good stream.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A short string of `alphabet`'s characters.
    pub fn word(&mut self, alphabet: &str, lo: usize, hi: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let n = self.range(lo, hi);
        (0..n).map(|_| *self.pick(&chars)).collect()
    }

    /// Any text: ASCII, JSON's special characters, controls, multi-byte and astral characters.
    pub fn text(&mut self, hi: usize) -> String {
        const SPICE: &[&str] = &[
            "a", "Z", "0", " ", "\"", "\\", "/", "\n", "\t", "\u{0}", "\u{1f}", "é", "€", "漢",
            "😀", "\u{2028}", "&", "=", "%", "+", "?", "#", ":", "{", "}", "[", "]", ",",
        ];
        let n = self.below(hi + 1);
        (0..n).map(|_| *self.pick(SPICE)).collect()
    }
}

/// Bytes worth putting at a mutated spot: lengths at the WebSocket length-form boundaries,
/// sign bits, JSON and URL syntax.
const INTERESTING: &[u8] = &[
    0, 1, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0xfe, 0xff, b'"', b'\\', b'{', b'}', b'[', b']',
    b',', b':', b'%', b'+', b'&', b'=', 0xc3, 0xed, 0xf4,
];

/// Applies one to four mutations to `data`: bit flips, interesting bytes and numbers, inserted
/// or deleted runs, a run copied elsewhere, a cut, or one of `tokens` inserted or written over.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, tokens: &[&[u8]]) {
    for _ in 0..rng.range(1, 4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = *rng.pick(INTERESTING);
            }
            2 => {
                let n = rng.range(1, 8);
                let extra = rng.bytes(n);
                data.splice(at..at, extra);
            }
            3 if len > 0 => {
                let end = (at + rng.range(1, 16)).min(len);
                data.drain(at.min(end)..end);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let end = (from + rng.range(1, 32)).min(len);
                let run = data[from..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, run);
            }
            5 => data.truncate(at),
            6 | 7 if !tokens.is_empty() => {
                let t = rng.pick(tokens).to_vec();
                if rng.chance(50) || len == 0 {
                    data.splice(at..at, t);
                } else {
                    let end = (at + t.len()).min(len);
                    data.splice(at..end, t);
                }
            }
            8 if len >= 8 => {
                // A big-endian or little-endian length at a random spot.
                let n: u64 = *rng.pick(&[0, 125, 126, 127, 65535, 65536, u64::MAX, 1 << 63]);
                let width = *rng.pick(&[2usize, 4, 8]);
                let i = rng.below(len - width + 1);
                let bytes = if rng.chance(50) {
                    n.to_be_bytes()
                } else {
                    n.to_le_bytes()
                };
                data[i..i + width].copy_from_slice(&bytes[8 - width..]);
            }
            _ if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                data.swap(a, b);
            }
            _ => data.push(*rng.pick(INTERESTING)),
        }
    }
}

/// JSON syntax and the Pusher protocol's own words, for [`mutate`] on JSON inputs.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e999",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\\",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{",
    b"\"event\"",
    b"\"data\"",
    b"\"channel\"",
    b"\"channels\"",
    b"\"auth\"",
    b"\"channel_data\"",
    b"\"user_id\"",
    b"\"user_info\"",
    b"\"user_data\"",
    b"\"pusher:subscribe\"",
    b"\"pusher:signin\"",
    b"\"client-x\"",
    b"\"presence-room\"",
    b"\"private-room\"",
    b"\"#server-to-user-1\"",
    b"\"socket_id\"",
    b"\"name\"",
    b"\"info\"",
    b"\"batch\"",
    b"\xff\xfe",
    b"\xed\xa0\x80",
];

/// Named counters: how many inputs reached each stage of a target.
#[derive(Default)]
pub struct Stats {
    counts: BTreeMap<&'static str, u64>,
    pub iterations: u64,
}

impl Stats {
    pub fn add(&mut self, what: &'static str) {
        *self.counts.entry(what).or_insert(0) += 1;
    }

    pub fn add_n(&mut self, what: &'static str, n: u64) {
        *self.counts.entry(what).or_insert(0) += n;
    }

    pub fn get(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or(0)
    }

    /// Fails unless at least `percent` % of the iterations counted `what`: a generator that
    /// stopped reaching that stage would otherwise pass silently.
    pub fn assert_reached(&self, what: &str, percent: u64) {
        let n = self.get(what);
        assert!(
            n * 100 >= self.iterations * percent && n > 0,
            "only {n} of {} inputs reached {what:?} (want {percent} %): the generator no longer \
             reaches that code",
            self.iterations
        );
    }
}

struct Budget {
    seed: u64,
    iters: u64,
    time: Duration,
}

/// A variable's value parsed by `parse`; a value that does not parse fails the run.
fn env<T>(name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(parse(v.trim()).unwrap_or_else(|| panic!("{name}={v:?} is not a number")))
}

/// Decimal or `0x` hex, as the failure message prints seeds.
fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

impl Budget {
    fn from_env(default_iters: u64) -> Budget {
        let iters = env("FUZZ_ITERS", number);
        let secs = env("FUZZ_SECS", |v| v.parse::<f64>().ok());
        let (iters, secs) = match (iters, secs) {
            (Some(i), None) => (i, f64::MAX),
            (None, Some(s)) => (u64::MAX, s),
            (Some(i), Some(s)) => (i, s),
            (None, None) => (default_iters, DEFAULT_SECS),
        };
        Budget {
            seed: env("FUZZ_SEED", number).unwrap_or(DEFAULT_SEED),
            iters,
            time: Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `one` once per iteration, each with its own generator seeded from the base seed and
/// the iteration number, until the budget is spent; prints what the inputs reached. A panic
/// (the code under test's, or a broken invariant) fails the test naming the seed and the
/// iteration to reproduce it with.
pub fn run(name: &str, default_iters: u64, mut one: impl FnMut(&mut Rng, &mut Stats)) -> Stats {
    let budget = Budget::from_env(default_iters);
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut i = 0u64;
    while i < budget.iters && start.elapsed() < budget.time {
        let mut rng = Rng::new(budget.seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| one(&mut rng, &mut stats))) {
            panic!(
                "fuzz {name}: input {i} failed (reproduce: FUZZ_SEED={:#x} FUZZ_ITERS={}): {}",
                budget.seed,
                i + 1,
                panic_text(&*p)
            );
        }
        i += 1;
    }
    stats.iterations = i;
    let counts: Vec<String> = stats
        .counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "fuzz {name}: {i} inputs in {:.1} s (FUZZ_SEED={:#x}): {}",
        start.elapsed().as_secs_f64(),
        budget.seed,
        counts.join(", ")
    );
    stats
}
