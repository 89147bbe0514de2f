//! The presence payload of `pusher_internal:subscription_succeeded` on a presence channel:
//! `{"presence":{"ids":[…],"hash":{id: user_info, …},"count":n}}`, ids sorted. Built by hand
//! because `user_info` is kept as the raw JSON text the auth endpoint signed: it goes on the
//! wire byte for byte, never parsed and re-serialised.

use super::push_json_str;

/// The `data` of a presence channel's `subscription_succeeded` for `members` (user id, raw
/// `user_info` JSON or `None` for `null`), in any order: ids come out sorted.
pub fn subscription_data<'a>(
    members: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let mut members: Vec<(&str, Option<&str>)> = members.into_iter().collect();
    members.sort_unstable_by_key(|&(id, _)| id);
    let mut out = String::from("{\"presence\":{\"ids\":[");
    for (i, (id, _)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, id);
    }
    out.push_str("],\"hash\":{");
    for (i, (id, info)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, id);
        out.push(':');
        out.push_str(info.unwrap_or("null"));
    }
    out.push_str("},\"count\":");
    out.push_str(&members.len().to_string());
    out.push_str("}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sorted_info_verbatim_null_when_absent() {
        let data = subscription_data([
            ("bob", None),
            ("alice", Some(r#"{"name": "Alice" }"#)),
            ("q\"x", Some("1")),
        ]);
        assert_eq!(
            data,
            r#"{"presence":{"ids":["alice","bob","q\"x"],"hash":{"alice":{"name": "Alice" },"bob":null,"q\"x":1},"count":3}}"#
        );
    }

    #[test]
    fn no_members() {
        assert_eq!(
            subscription_data([]),
            r#"{"presence":{"ids":[],"hash":{},"count":0}}"#
        );
    }
}
