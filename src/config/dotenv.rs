//! Laravel `.env` files (`--env-file`): `KEY=value`, `export KEY=value`, quotes, `#` comments and
//! `${VAR}` references, read the way Laravel's own dotenv reads the shop's file so the same
//! file configures both.

use std::collections::HashMap;

use super::env::{Env, ProcessEnv};

/// Parses a Laravel `.env` file; `${VAR}` references not defined earlier in the file come from
/// the process environment.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    parse_env_text(text, &ProcessEnv::default())
}

/// Parses a Laravel `.env` file. A `${VAR}` reference is resolved from earlier keys of the file,
/// else from `env` (read through the `Env` trait like every other variable), else is empty.
/// Lines that are not `KEY=value` are skipped, as Laravel does.
pub fn parse_env_text(text: &str, env: &dyn Env) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let Some((k, v)) = assignment(line) else {
            continue;
        };
        let (value, expand) = unquote(v);
        let value = if expand {
            expand_refs(&value, &vars, env)
        } else {
            value
        };
        vars.insert(k.to_owned(), value);
    }
    vars
}

/// `KEY` and the raw value of a `KEY=value` or `export KEY=value` line; `None` for blank lines,
/// comments and anything without a valid key.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((k, v.trim()))
}

/// The value without its quotes, and whether `${VAR}` references in it expand: double quotes
/// take `\n` and `\"` escapes and expand, single quotes are literal, a bare value ends at ` #`.
fn unquote(v: &str) -> (String, bool) {
    if let Some(inner) = v
        .strip_prefix('"')
        .and_then(|r| r.rfind('"').map(|i| &r[..i]))
    {
        (inner.replace("\\n", "\n").replace("\\\"", "\""), true)
    } else if let Some(inner) = v
        .strip_prefix('\'')
        .and_then(|r| r.rfind('\'').map(|i| &r[..i]))
    {
        (inner.to_owned(), false)
    } else {
        let unquoted = match v.find(" #") {
            Some(i) => v[..i].trim_end(),
            None => v,
        };
        (unquoted.to_owned(), true)
    }
}

/// Replaces each `${NAME}` with its value (an unterminated `${` is kept as written).
fn expand_refs(value: &str, vars: &HashMap<String, String>, env: &dyn Env) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let v = vars
            .get(name)
            .cloned()
            .or_else(|| env.get(name))
            .unwrap_or_default();
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_like_the_seed() {
        let text = "APP_NAME=sellermind\n# comment\nBROADCAST_CONNECTION=reverb\nREVERB_APP_ID=123456\nREVERB_APP_KEY=\"abc\"\nREVERB_APP_SECRET='x${NOPE}'\nREVERB_HOST=\"localhost\"\nREVERB_PORT=8090 # trailing\nVITE_REVERB_APP_KEY=\"${REVERB_APP_KEY}\"\nexport VITE_REVERB_HOST=\"${REVERB_HOST}\"\nbroken line\n=x\n";
        let none = HashMap::new();
        let v = parse_env_text(text, &none);
        assert_eq!(v["REVERB_APP_ID"], "123456");
        assert_eq!(v["REVERB_APP_KEY"], "abc");
        assert_eq!(v["REVERB_APP_SECRET"], "x${NOPE}");
        assert_eq!(v["REVERB_PORT"], "8090");
        assert_eq!(v["VITE_REVERB_APP_KEY"], "abc");
        assert_eq!(v["VITE_REVERB_HOST"], "localhost");
        assert_eq!(
            parse_env_text("A=${unterminated", &none)["A"],
            "${unterminated"
        );
    }

    #[test]
    fn references_fall_back_to_the_given_environment() {
        let env: HashMap<String, String> = [("FROM_ENV".to_string(), "e".to_string())].into();
        let v = parse_env_text(
            "A=\"${FROM_ENV}-${MISSING}\"\nFROM_ENV=file\nB=${FROM_ENV}\n",
            &env,
        );
        assert_eq!(
            v["A"], "e-",
            "not yet in the file: the environment, else empty"
        );
        assert_eq!(v["B"], "file", "an earlier key of the file wins");
    }
}
