//! Consumer cursors: one small file per cursor, `<name>.cursor`, holding the last seq the
//! consumer has finished with. Written atomically: `<name>.cursor.tmp`, fsync, rename,
//! directory fsync. The file is text so an operator can `cat` it:
//!
//! ```text
//! <seq> <crc32c of the decimal seq, 8 hex digits>\n
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::SpoolError;

pub(crate) const CURSOR_SUFFIX: &str = ".cursor";
pub(crate) const TEMP_SUFFIX: &str = ".cursor.tmp";

/// `[A-Za-z0-9_-]{1,64}`
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn check_name(name: &str) -> Result<(), SpoolError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(SpoolError::InvalidCursorName {
            name: name.to_string(),
        })
    }
}

pub(crate) fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{CURSOR_SUFFIX}"))
}

/// The cursor name of a directory entry, if it is a cursor file.
pub(crate) fn parse_cursor_name(file_name: &str) -> Option<&str> {
    if file_name.ends_with(TEMP_SUFFIX) {
        return None;
    }
    file_name
        .strip_suffix(CURSOR_SUFFIX)
        .filter(|n| valid_name(n))
}

pub(crate) fn encode(seq: u64) -> String {
    let digits = seq.to_string();
    format!("{digits} {:08x}\n", crc32c::crc32c(digits.as_bytes()))
}

/// Parse a cursor file's contents; `Err` says what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<u64, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text")?;
    let line = text
        .strip_suffix('\n')
        .ok_or("truncated (no final newline)")?;
    let (digits, crc) = line
        .split_once(' ')
        .ok_or("not in the form '<seq> <crc>'")?;
    let seq: u64 = digits.parse().map_err(|_| "seq is not a number")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "checksum is not hex")?;
    if crc != crc32c::crc32c(digits.as_bytes()) {
        return Err("checksum mismatch");
    }
    Ok(seq)
}

/// Read a cursor file: `Ok(Ok(seq))`, `Ok(Err(reason))` if it is garbage, `Err` on I/O failure.
pub(crate) fn read(path: &Path) -> Result<Result<u64, &'static str>, SpoolError> {
    let bytes = fs::read(path).map_err(|e| SpoolError::io(path, "read cursor", e))?;
    Ok(decode(&bytes))
}

/// fsync a directory so that creates, renames and deletes in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, "fsync directory", e))
}

/// Atomically replace cursor `name` with `seq`.
pub(crate) fn write(dir: &Path, name: &str, seq: u64) -> Result<(), SpoolError> {
    write_file(dir, &format!("{name}{CURSOR_SUFFIX}"), seq)
}

/// Atomically replace `dir/file` with `seq` in the cursor format (also the hand-over floor's).
pub(crate) fn write_file(dir: &Path, file: &str, seq: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{file}.tmp"));
    let path = dir.join(file);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| SpoolError::io(&tmp, "create", e))?;
        f.write_all(encode(seq).as_bytes())
            .map_err(|e| SpoolError::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| SpoolError::io(&tmp, "fsync", e))?;
        fs::rename(&tmp, &path).map_err(|e| SpoolError::io(&path, "rename cursor", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Delete cursor `name` (no error if it does not exist).
pub(crate) fn remove(dir: &Path, name: &str) -> Result<(), SpoolError> {
    let path = cursor_path(dir, name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(&path, "remove cursor", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_encoding() {
        assert_eq!(decode(encode(0).as_bytes()), Ok(0));
        assert_eq!(decode(encode(u64::MAX).as_bytes()), Ok(u64::MAX));
        assert!(decode(b"12 00000000\n").is_err());
        assert!(decode(b"").is_err());
        assert!(decode(&[0xff, 0xfe]).is_err());
        let good = encode(12345);
        assert!(decode(&good.as_bytes()[..good.len() - 1]).is_err());
        assert!(valid_name("webhooks") && valid_name("dead-letter_1"));
        assert!(!valid_name("") && !valid_name("../x") && !valid_name("a.b"));
        assert_eq!(parse_cursor_name("webhooks.cursor"), Some("webhooks"));
        assert_eq!(parse_cursor_name("webhooks.cursor.tmp"), None);
    }
}
