//! The bus: one Redis Stream per app (`{base}bus`) that every node, the origin too, delivers
//! from in stream order. Entries carry fields, not frames; each node builds the frame with the
//! code a single box uses, so clients cannot tell a cluster from one box.
//!
//! | `k` | entry | fields |
//! | --- | --- | --- |
//! | `e` | an event the HTTP API accepted | `o` origin, `q` its event-log seq, `x` except socket, `n` name, `d` data, `cs` channels (JSON array) |
//! | `f` | a client event | `c` channel, `x` the sender's socket, `f` the frame |
//! | `ma` | a user's first connection anywhere joined | `c`, `u` user id, `i` user_info (JSON or empty), `x` the joining socket |
//! | `mr` | a user's last connection anywhere left | `c`, `u` |
//! | `sc` | a channel's subscription count changed | `c`, `n` |
//! | `t` | terminate a user's connections | `u` |
//! | `on` | a watched user's first signed-in connection anywhere appeared | `u` |
//! | `off` | a watched user's last signed-in connection anywhere went | `u` |
//! | `z` | nothing: gives a subscribe's gate an id on an empty bus | |

use std::collections::HashMap;
use std::fmt;

use redis::Value;

use super::conn::{items, text};

/// Bits of a position that hold the entry's sequence within its millisecond.
const SEQ_BITS: u32 = 20;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The cluster-wide resume position of this entry: `ms << 20 | seq`, ordered like the ids
    /// and the same on every node (a pure function of the id). 44 bits of milliseconds last
    /// until the year 2527; 20 bits of sequence hold a million entries in one millisecond,
    /// which Redis never appends (a clock that steps back keeps `ms` and counts `seq` up: ten
    /// minutes back at 1,000 events/s is 600,000). Past that the sequence saturates and the
    /// deliverer keeps positions strictly increasing itself (`Deliverer::position`).
    pub fn position(self) -> u64 {
        (self.ms << SEQ_BITS) | self.seq.min(SEQ_MAX)
    }

    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What a bus entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Event {
        origin: String,
        q: u64,
        except: Option<String>,
        name: String,
        data: String,
        channels: Vec<String>,
    },
    Client {
        channel: String,
        except: String,
        frame: String,
    },
    MemberAdded {
        channel: String,
        user: String,
        info: Option<String>,
        except: String,
    },
    MemberRemoved {
        channel: String,
        user: String,
    },
    Count {
        channel: String,
        n: usize,
    },
    Terminate {
        user: String,
    },
    /// A watched user went online (first signed-in connection anywhere) or offline (last).
    Watch {
        user: String,
        online: bool,
    },
    /// A kind this version does not know (a newer node wrote it): skipped.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub kind: Kind,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Entry {
    /// An entry from its id and field map; `None` when the id or a required field is missing.
    pub fn from_fields(id: &str, f: &HashMap<String, String>) -> Option<Entry> {
        let id = StreamId::parse(id)?;
        let get = |k: &str| f.get(k).cloned();
        let kind = match f.get("k").map(String::as_str) {
            Some("e") => Kind::Event {
                origin: get("o")?,
                q: get("q")?.parse().ok()?,
                except: non_empty(get("x")),
                name: get("n")?,
                data: get("d")?,
                channels: serde_json::from_str(&get("cs")?).ok()?,
            },
            Some("f") => Kind::Client {
                channel: get("c")?,
                except: get("x")?,
                frame: get("f")?,
            },
            Some("ma") => Kind::MemberAdded {
                channel: get("c")?,
                user: get("u")?,
                info: non_empty(get("i")),
                except: get("x").unwrap_or_default(),
            },
            Some("mr") => Kind::MemberRemoved {
                channel: get("c")?,
                user: get("u")?,
            },
            Some("sc") => Kind::Count {
                channel: get("c")?,
                n: get("n")?.parse().ok()?,
            },
            Some("t") => Kind::Terminate { user: get("u")? },
            Some(k @ ("on" | "off")) => Kind::Watch {
                user: get("u")?,
                online: k == "on",
            },
            _ => Kind::Unknown,
        };
        Some(Entry { id, kind })
    }
}

/// The entries of an `XREAD`/`XRANGE`-style answer: `[[key, [[id, [f, v, …]], …]]]` for XREAD
/// (`nested`), `[[id, [f, v, …]], …]` otherwise. Malformed entries are skipped with a warning.
pub fn parse_entries(v: &Value, nested: bool) -> Vec<(StreamId, HashMap<String, String>)> {
    let list: Vec<&Value> = if nested {
        items(v)
            .iter()
            .flat_map(|stream| items(stream).get(1).map(items).unwrap_or(&[]))
            .collect()
    } else {
        items(v).iter().collect()
    };
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let parts = items(e);
        let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
            continue;
        };
        let Some(id) = StreamId::parse(&id) else {
            continue;
        };
        let map: HashMap<String, String> = items(fields)
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            })
            .collect();
        out.push((id, map));
    }
    out
}

/// Bus entries of an `XREAD` answer; unreadable ones become [`Kind::Unknown`] so the cursor
/// still moves past them.
pub fn entries(v: &Value) -> Vec<Entry> {
    to_entries(parse_entries(v, true))
}

/// Bus entries of an `XRANGE`/`XREVRANGE` answer (as [`entries`]).
pub fn range_entries(v: &Value) -> Vec<Entry> {
    to_entries(parse_entries(v, false))
}

fn to_entries(parsed: Vec<(StreamId, HashMap<String, String>)>) -> Vec<Entry> {
    parsed
        .into_iter()
        .map(|(id, f)| {
            Entry::from_fields(&id.to_string(), &f).unwrap_or_else(|| {
                tracing::warn!(%id, "cluster: skipping an unreadable bus entry");
                Entry {
                    id,
                    kind: Kind::Unknown,
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn ids_order_like_redis() {
        let a = StreamId::parse("5-1").unwrap();
        let b = StreamId::parse("5-2").unwrap();
        let c = StreamId::parse("10-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "10-0");
        assert_eq!(StreamId::parse("x"), None);
    }

    #[test]
    fn positions_order_like_the_ids() {
        let ids = [
            "1700000000000-0",
            "1700000000000-1",
            "1700000000000-999",
            "1700000000001-0",
        ];
        let pos: Vec<u64> = ids
            .iter()
            .map(|s| StreamId::parse(s).unwrap().position())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        assert_eq!(StreamId::ZERO.position(), 0);
        let far = StreamId {
            ms: 1 << 43,
            seq: 0,
        };
        assert!(far.position() > pos[3], "no overflow for centuries");
    }

    #[test]
    fn an_xread_answer_becomes_entries() {
        let fields = |kv: &[&str]| Value::Array(kv.iter().map(|s| bulk(s)).collect());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("pb:v1:{1}:bus"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("7-0"),
                    fields(&[
                        "k",
                        "e",
                        "o",
                        "n1",
                        "q",
                        "3",
                        "x",
                        "",
                        "n",
                        "ev",
                        "d",
                        "{}",
                        "cs",
                        "[\"a\",\"b\"]",
                    ]),
                ]),
                Value::Array(vec![
                    bulk("7-1"),
                    fields(&["k", "mr", "c", "presence-a", "u", "u|1"]),
                ]),
                Value::Array(vec![bulk("8-0"), fields(&["k", "zz"])]),
                Value::Array(vec![bulk("8-1"), fields(&["k", "off", "u", "7"])]),
            ]),
        ])]);
        let e = entries(&reply);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[0].kind,
            Kind::Event {
                origin: "n1".into(),
                q: 3,
                except: None,
                name: "ev".into(),
                data: "{}".into(),
                channels: vec!["a".into(), "b".into()],
            }
        );
        assert_eq!(
            e[1].kind,
            Kind::MemberRemoved {
                channel: "presence-a".into(),
                user: "u|1".into()
            }
        );
        assert_eq!(e[2].kind, Kind::Unknown);
        assert_eq!(e[2].id, StreamId { ms: 8, seq: 0 });
        assert_eq!(
            e[3].kind,
            Kind::Watch {
                user: "7".into(),
                online: false
            }
        );
    }

    #[test]
    fn an_xrevrange_answer_becomes_entries_and_junk_is_skipped_or_unknown() {
        let fields = |kv: &[&str]| Value::Array(kv.iter().map(|s| bulk(s)).collect());
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("9-1"), fields(&["k", "t", "u", "u7"])]),
            // Not an id: skipped (the reader has no cursor to move past it).
            Value::Array(vec![bulk("nine"), fields(&["k", "t", "u", "u7"])]),
            // An id with fields nobody knows: kept as Unknown so positions stay in order.
            Value::Array(vec![bulk("9-0"), fields(&["zz"])]),
            Value::Nil,
        ]);
        let e = range_entries(&reply);
        assert_eq!(
            e.len(),
            2,
            "{:?}",
            e.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        assert_eq!(e[0].id, StreamId { ms: 9, seq: 1 });
        assert_eq!(e[0].kind, Kind::Terminate { user: "u7".into() });
        assert_eq!(e[1].kind, Kind::Unknown);
    }
}
