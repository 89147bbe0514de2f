//! `pushbox serve --dev`: the embedded default. A dev app on 127.0.0.1:8080 whose generated
//! id, key, secret and console password are kept in a local state directory (`./.pushbox-dev`,
//! or `PUSHBOX_STATE_DIR`) so they survive restarts; `serve --dev` also notes there where it
//! listens (`dev-server.toml`). The other commands take `--dev` too and then use that saved
//! app and address (never a new app). Printing the keys is the command line's job
//! (`cli::serve`).

use std::path::Path;

use crate::config::{AppConfig, Config, ConfigError, DevApp, Env};

/// The file that holds the dev app's credentials.
const APP_FILE: &str = "dev-app.toml";
/// The file where `serve --dev` notes the address it listens on.
const SERVER_FILE: &str = "dev-server.toml";

/// Fills `buf` from the OS random generator.
fn random_bytes(buf: &mut [u8]) -> Result<(), String> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| "the OS random number generator is unavailable".to_owned())
}

/// `n` random lowercase alphanumerics from the OS generator.
fn random_token(n: usize) -> Result<String, String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = vec![0u8; n];
    random_bytes(&mut buf)?;
    Ok(buf
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// Random credentials in the shape `REVERB_*` expects: a numeric id, 20 lowercase
/// alphanumerics for the key and 32 for the secret.
pub fn generate_app() -> Result<(String, String, String), String> {
    let mut buf = [0u8; 4];
    random_bytes(&mut buf)?;
    let id = 100_000 + (u32::from_le_bytes(buf) % 900_000);
    Ok((id.to_string(), random_token(20)?, random_token(32)?))
}

/// `dev-app.toml` as written. `console_password` is missing in files saved before the dev
/// console existed; `serve --dev` then adds one.
#[derive(serde::Deserialize)]
struct Saved {
    id: String,
    key: String,
    secret: String,
    console_password: Option<String>,
}

impl Saved {
    fn dev_app(self) -> DevApp {
        DevApp::new(
            AppConfig::with_defaults(&self.id, &self.key, &self.secret),
            self.console_password,
        )
    }
}

/// A dev state file's text, if it exists.
fn read(file: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Invalid {
            source: file.display().to_string(),
            message: format!("cannot read it ({e}): fix its permissions, or delete it (deleting {APP_FILE} generates new dev keys)"),
        }),
    }
}

/// Writes `text` to `dir/name` atomically (a new file renamed over the old one).
fn write(dir: &Path, name: &str, text: &str) -> Result<(), ConfigError> {
    let file = dir.join(name);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &file)
    };
    write().map_err(|e| ConfigError::Invalid {
        source: file.display().to_string(),
        message: format!("cannot save the dev state ({e}): make the directory writable, or set PUSHBOX_STATE_DIR to one that is"),
    })
}

/// The saved dev app in `dir`, if there is one.
fn load_saved(dir: &Path) -> Result<Option<Saved>, ConfigError> {
    let file = dir.join(APP_FILE);
    let Some(text) = read(&file)? else {
        return Ok(None);
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| ConfigError::Parse {
            path: file.clone(),
            error: format!("{e} (delete the file to generate new dev keys)"),
        })
}

fn save(dir: &Path, s: &Saved) -> Result<(), ConfigError> {
    let text = format!(
        "# pushbox --dev app (delete to regenerate)\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\n# the admin password of http://…/console in dev mode\nconsole_password = \"{}\"\n",
        s.id,
        s.key,
        s.secret,
        s.console_password.as_deref().unwrap_or_default()
    );
    write(dir, APP_FILE, &text)
}

/// The saved dev app, made (or given its console password) on first use.
fn load_or_create(dir: &Path) -> Result<Saved, ConfigError> {
    fn generate<T>(r: Result<T, String>) -> Result<T, ConfigError> {
        r.map_err(|e| ConfigError::Invalid {
            source: "pushbox serve --dev".into(),
            message: e,
        })
    }
    let mut saved = match load_saved(dir)? {
        Some(s) if s.console_password.is_some() => return Ok(s),
        Some(s) => s,
        None => {
            let (id, key, secret) = generate(generate_app())?;
            Saved {
                id,
                key,
                secret,
                console_password: None,
            }
        }
    };
    saved.console_password = Some(generate(random_token(20))?);
    save(dir, &saved)?;
    Ok(saved)
}

/// `serve --dev`: the dev configuration, creating the dev app on first use; listening on
/// `host` when given (`serve --dev --host 0.0.0.0`).
pub fn config(env: &dyn Env, host: Option<&str>) -> Result<Config, ConfigError> {
    let state_dir = Config::dev_state_dir(env);
    let dev = DevApp {
        host: host.map(str::to_owned),
        ..load_or_create(&state_dir)?.dev_app()
    };
    Config::dev(state_dir, dev, env)
}

/// Notes where `serve --dev` listens, so that the other `--dev` commands reach it there.
pub fn save_listen(cfg: &Config) -> Result<(), ConfigError> {
    let text = format!(
        "# where the last `pushbox serve --dev` listened (the other --dev commands read it)\nhost = \"{}\"\nport = {}\n",
        cfg.server.host, cfg.server.port
    );
    write(&cfg.state_dir, SERVER_FILE, &text)
}

/// Where the last `serve --dev` listened, if it noted it (an unreadable note is ignored: the
/// defaults apply).
fn load_listen(dir: &Path) -> (Option<String>, Option<u16>) {
    #[derive(serde::Deserialize)]
    struct Listen {
        host: Option<String>,
        port: Option<u16>,
    }
    match read(&dir.join(SERVER_FILE))
        .ok()
        .flatten()
        .and_then(|t| toml::from_str::<Listen>(&t).ok())
    {
        Some(l) => (l.host, l.port),
        None => (None, None),
    }
}

/// `--dev` on the other commands (`trigger`, `events tail`, `queue`, `env`, `check`): the same
/// configuration `serve --dev` runs with, from its saved app and address; prints nothing and
/// creates nothing.
pub fn existing(env: &dyn Env) -> Result<Config, ConfigError> {
    let state_dir = Config::dev_state_dir(env);
    let Some(saved) = load_saved(&state_dir)? else {
        return Err(ConfigError::NoDevApp { dir: state_dir });
    };
    let (host, port) = load_listen(&state_dir);
    let dev = DevApp {
        host,
        port,
        ..saved.dev_app()
    };
    Config::dev(state_dir, dev, env)
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
        let a = config(&env, None).unwrap();
        let b = config(&env, None).unwrap();
        assert_eq!(a.apps[0].key, b.apps[0].key);
        assert_eq!(a.apps[0].secret, b.apps[0].secret);
        assert_eq!(a.server.host, "127.0.0.1");
        assert_eq!(a.server.port, 8080);
        assert_eq!(a.apps[0].key.len(), 20);
        assert_eq!(a.apps[0].secret.len(), 32);
        let password = |c: &Config| c.console.as_ref().and_then(|c| c.password.clone());
        assert_eq!(password(&a).map(|p| p.len()), Some(20));
        assert_eq!(password(&a), password(&b));
        // A file saved before the dev console existed keeps its keys and gets a password.
        std::fs::write(
            dir.join("dev-app.toml"),
            "id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
        )
        .unwrap();
        let c = existing(&env).unwrap();
        assert!(password(&c).is_none(), "the other commands change nothing");
        let c = config(&env, Some("0.0.0.0")).unwrap();
        assert_eq!(
            (c.apps[0].key.as_str(), c.server.host.as_str()),
            ("k", "0.0.0.0")
        );
        assert!(password(&c).is_some());
        assert_eq!(password(&existing(&env).unwrap()), password(&c));
        // The other commands go where the dev server said it listens.
        save_listen(&c).unwrap();
        assert_eq!(existing(&env).unwrap().server.host, "0.0.0.0");
        std::fs::write(dir.join("dev-app.toml"), "garbage = [").unwrap();
        let err = config(&env, None).unwrap_err().to_string();
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
