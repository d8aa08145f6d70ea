//! The config file: read, parsed and checked on its own, so that each
//! refusal names the file, the line and column, and the key.

use std::path::Path;

use super::{expected, Config, ConfigError, Settings};

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    /// Parses and checks the file on its own, so that a bad value is named
    /// with its line (flags are checked when they are laid over it).
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let file: Settings = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let key = key_at(text, at);
            located(path, text, at, describe(e.message(), key))
        })?;
        match Config::resolve(file.clone(), Settings::default()) {
            Ok(_) => Ok(file),
            Err(ConfigError::Value { key, value, why }) => {
                let at = key_line(text, key).unwrap_or(0);
                Err(located(
                    path,
                    text,
                    at,
                    format!("{key} = {value}: expected {why}"),
                ))
            }
            Err(e) => Err(e),
        }
    }
}

/// A parse error at byte `at` of `text`, with its line and column.
fn located(path: &Path, text: &str, at: usize, message: String) -> ConfigError {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ConfigError::Parse {
        path: path.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message,
    }
}

/// toml's message on one line, naming the key and, for a value of the wrong
/// type or range, the form the key takes instead of serde's type name.
fn describe(message: &str, key: Option<&str>) -> String {
    let message = message.trim().replace('\n', "; ");
    let Some(key) = key else {
        return message;
    };
    if message.contains(&format!("`{key}`")) {
        // "unknown field `x`, expected one of ...", "duplicate key `x`".
        return message;
    }
    match (message.split_once(", expected "), expected(key)) {
        (Some((what, _)), Some(form)) => format!("{key}: {what}, expected {form}"),
        _ => format!("{key}: {message}"),
    }
}

/// The key whose value holds byte `at`: the nearest `key =` at or above it
/// within the same table (a list may span lines).
fn key_at(text: &str, at: usize) -> Option<&str> {
    let upto = &text[..text[at.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| at + i)];
    for line in upto.lines().rev() {
        let line = line.trim_start();
        if line.starts_with('[') {
            return None;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Some(k);
            }
        }
    }
    None
}

/// The byte offset of the line that sets `key`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some((k, _)) = line.split_once('=') {
            if k.trim().trim_matches('"') == key {
                return Some(offset + (line.len() - line.trim_start().len()));
            }
        }
        offset += line.len();
    }
    None
}
