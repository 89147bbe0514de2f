//! `pushbox serve --dev`: the embedded default. A dev app on 127.0.0.1:8080 whose generated
//! id, key and secret are kept in a local state directory (`./.pushbox-dev`, or
//! `PUSHBOX_STATE_DIR`) so they survive restarts, printed with the Laravel `.env` block.
//! The other commands take `--dev` too and then use that saved app (never a new one).

use std::path::{Path, PathBuf};

use crate::config::{AppConfig, Config, ConfigError, Env};

/// Random credentials in the shape `REVERB_*` expects: a numeric id, 20 lowercase
/// alphanumerics for the key and 32 for the secret.
pub fn generate_app() -> Result<(String, String, String), String> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut buf = [0u8; 64];
    rng.fill(&mut buf)
        .map_err(|_| "the OS random number generator is unavailable".to_owned())?;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect()
    };
    let id = 100_000 + (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) % 900_000);
    Ok((id.to_string(), pick(&buf[4..24]), pick(&buf[24..56])))
}

/// The saved dev app in `dir`, if there is one.
fn load_saved(dir: &Path) -> Result<Option<(String, String, String)>, ConfigError> {
    let file = dir.join("dev-app.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::Invalid {
                source: file.display().to_string(),
                message: format!("cannot read the saved dev app ({e}): fix its permissions, or delete it to generate new dev keys"),
            })
        }
    };
    #[derive(serde::Deserialize)]
    struct Saved {
        id: String,
        key: String,
        secret: String,
    }
    let s: Saved = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: file.clone(),
        error: format!("{e} (delete the file to generate new dev keys)"),
    })?;
    Ok(Some((s.id, s.key, s.secret)))
}

fn load_or_create(dir: &Path) -> Result<(String, String, String), ConfigError> {
    if let Some(saved) = load_saved(dir)? {
        return Ok(saved);
    }
    let file = dir.join("dev-app.toml");
    let (id, key, secret) = generate_app().map_err(|e| ConfigError::Invalid {
        source: "pushbox serve --dev".into(),
        message: e,
    })?;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("dev-app.toml.tmp");
        std::fs::write(&tmp, format!("# pushbox --dev app (delete to regenerate)\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{secret}\"\n"))?;
        std::fs::rename(&tmp, &file)
    };
    write().map_err(|e| ConfigError::Invalid {
        source: file.display().to_string(),
        message: format!("cannot save the dev app ({e}): make the directory writable, or set PUSHBOX_STATE_DIR to one that is"),
    })?;
    Ok((id, key, secret))
}

/// `serve --dev`: the dev configuration, creating the dev app on first use, and prints the keys
/// and the `.env` block.
pub fn config(env: &dyn Env) -> Result<Config, ConfigError> {
    let state_dir = Config::dev_state_dir(env);
    let (id, key, secret) = load_or_create(&state_dir)?;
    let cfg = build(state_dir, &id, &key, &secret, env)?;
    println!(
        "{}",
        env_block(&cfg.apps[0], &cfg.server.host, cfg.server.port, "http")
    );
    println!(
        "# dev state: {} (delete dev-app.toml there to regenerate the keys)",
        cfg.state_dir.display()
    );
    Ok(cfg)
}

/// `--dev` on the other commands (`trigger`, `events tail`, `queue`, `env`, `check`): the same
/// configuration `serve --dev` runs with, from its saved app; prints nothing and creates nothing.
pub fn existing(env: &dyn Env) -> Result<Config, ConfigError> {
    let state_dir = Config::dev_state_dir(env);
    match load_saved(&state_dir)? {
        Some((id, key, secret)) => build(state_dir, &id, &key, &secret, env),
        None => Err(ConfigError::NoDevApp { dir: state_dir }),
    }
}

fn build(
    state_dir: PathBuf,
    id: &str,
    key: &str,
    secret: &str,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    Config::dev(state_dir, AppConfig::with_defaults(id, key, secret), env)
}

/// The Laravel `.env` block for an app reached at `host:port` over `scheme`.
pub fn env_block(app: &AppConfig, host: &str, port: u16, scheme: &str) -> String {
    format!(
        "# pushbox app {id}: paste into Laravel's .env\nBROADCAST_CONNECTION=reverb\nREVERB_APP_ID={id}\nREVERB_APP_KEY={key}\nREVERB_APP_SECRET={secret}\nREVERB_HOST=\"{host}\"\nREVERB_PORT={port}\nREVERB_SCHEME={scheme}\n\nVITE_REVERB_APP_KEY=\"${{REVERB_APP_KEY}}\"\nVITE_REVERB_HOST=\"${{REVERB_HOST}}\"\nVITE_REVERB_PORT=\"${{REVERB_PORT}}\"\nVITE_REVERB_SCHEME=\"${{REVERB_SCHEME}}\"",
        id = app.id,
        key = app.key,
        secret = app.secret,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn dev_keys_survive_restarts() {
        let dir = std::env::temp_dir().join(format!("pushbox-dev-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let env: HashMap<String, String> =
            [("PUSHBOX_STATE_DIR".to_string(), dir.display().to_string())].into();
        let a = config(&env).unwrap();
        let b = config(&env).unwrap();
        assert_eq!(a.apps[0].key, b.apps[0].key);
        assert_eq!(a.apps[0].secret, b.apps[0].secret);
        assert_eq!(a.server.host, "127.0.0.1");
        assert_eq!(a.server.port, 8080);
        assert_eq!(a.apps[0].key.len(), 20);
        assert_eq!(a.apps[0].secret.len(), 32);
        std::fs::write(dir.join("dev-app.toml"), "garbage = [").unwrap();
        let err = config(&env).unwrap_err().to_string();
        assert!(
            err.contains("dev-app.toml") && err.contains("delete"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_block_is_what_laravel_reads() {
        let app = AppConfig::with_defaults("1", "k", "s");
        let parsed = crate::config::parse_env_file(&env_block(&app, "box.lan", 443, "https"));
        assert_eq!(parsed["BROADCAST_CONNECTION"], "reverb");
        assert_eq!(parsed["REVERB_APP_KEY"], "k");
        assert_eq!(parsed["VITE_REVERB_APP_KEY"], "k");
        assert_eq!(parsed["VITE_REVERB_PORT"], "443");
        assert_eq!(parsed["VITE_REVERB_SCHEME"], "https");
    }
}
