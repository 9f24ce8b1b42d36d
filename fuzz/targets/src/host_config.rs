//! Target `host_config`: the host's `host.toml`, read as `burrow-host` reads it
//! (`Config::parse`, then `Config::validate`), plus `key_line`, which `check-config`
//! uses to point at the line of the key an error names.
//!
//! The input is the file's text (the host refuses a file that is not UTF-8).
//!
//! Asserted for every input:
//! - a parse error gives a line and column inside the text and never repeats a line of
//!   it (a plugin's `config` may hold a credential);
//! - a config that parses still parses, to the same config, after a round trip through
//!   TOML's own reading and printing: its meaning does not hang on formatting;
//! - validation gives the same answer twice, and again for the round-tripped text;
//! - a config that validates hands each plugin its `config` table intact: the TOML and
//!   JSON forms the host passes on read back to the same table;
//! - `key_line` answers inside the text for any key, and for the key an error names.

use std::path::Path;

use burrow_host::config::{key_line, Config, ConfigError};

/// Runs one input; panics when an invariant breaks.
pub fn host_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.matches('\n').count() + 1;
    let config = match Config::parse(Path::new("host.toml"), text) {
        Ok(config) => config,
        Err(ConfigError::Parse { message, .. }) => {
            check_parse_error(text, lines, &message);
            return;
        }
        Err(other) => panic!("parse gave a non-parse error: {other}"),
    };

    // Round trip through TOML's own data model: same config, same verdict.
    let table: toml::Table = toml::from_str(text).expect("text that parses as a config parses as TOML");
    let printed = toml::to_string(&table).expect("a parsed TOML table prints");
    let again = Config::from_toml(&printed)
        .unwrap_or_else(|e| panic!("the config no longer parses after a TOML round trip: {e}\n{printed}"));
    assert_eq!(format!("{config:?}"), format!("{again:?}"), "the TOML round trip changed the config");

    for key in ["agents.listen", "plugins.authorizer.config", "plugins.workload[0].source", "cluster"] {
        check_key_line(text, lines, key);
    }

    // Validation opens the files the config names (TLS certificates, token and secret
    // files). The fuzzer must not be steered into device or proc files (`/dev/zero` is
    // endless, `/dev/stdin` blocks) or into build output: such configs are parsed only.
    let shown = format!("{config:?}");
    if ["dev", "proc", "sys", "target", "..", "fd"].iter().any(|bad| shown.contains(bad)) {
        return;
    }
    let verdict = config.validate().map_err(|e| e.to_string());
    assert_eq!(verdict, config.validate().map_err(|e| e.to_string()), "validation is not deterministic");
    assert_eq!(
        verdict,
        again.validate().map_err(|e| e.to_string()),
        "the TOML round trip changed the verdict"
    );
    match verdict {
        Ok(()) => check_valid(&config),
        Err(message) => {
            // "invalid config: <key>: <reason>": check-config looks the key up.
            if let Some((key, _)) = message.strip_prefix("invalid config: ").and_then(|m| m.split_once(": "))
            {
                check_key_line(text, lines, key);
            }
        }
    }
}

fn check_parse_error(text: &str, lines: usize, message: &str) {
    if let Some(rest) = message.strip_prefix("line ") {
        let (line, rest) = rest.split_once(", column ").expect("line, column");
        let line: usize = line.parse().expect("a line number");
        let (column, _) = rest.split_once(": ").expect("column: message");
        let column: usize = column.parse().expect("a column number");
        assert!((1..=lines).contains(&line), "line {line} of {lines}");
        let width = text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count());
        assert!((1..=width + 1).contains(&column), "column {column} of a {width}-character line");
    }
    for line in text.lines() {
        let line = line.trim();
        // A `key = "value"` line long enough to hold a secret. Serde's messages quote a
        // value only Debug-escaped (`\"`), so such a line never appears in one verbatim
        // unless the line itself was printed; a line without a double-quoted value could
        // (the fuzzer soon writes the error message itself into the input).
        if line.len() >= 12 && line.contains("= \"") {
            assert!(!message.contains(line), "the parse error repeats the line {line:?}: {message}");
        }
    }
}

fn check_key_line(text: &str, lines: usize, key: &str) {
    if let Some(at) = key_line(text, key) {
        assert!((1..=lines).contains(&at.line), "key_line({key:?}) = line {} of {lines}", at.line);
    }
}

/// What the host's start-up relies on in a config `validate` accepted.
fn check_valid(config: &Config) {
    let id = config.replica_id();
    assert!((1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic()), "replica id {id:?}");
    for slot in config.plugins.slots() {
        let table = &slot.config.config;
        let printed = slot.config.config_toml();
        let back: toml::Table = toml::from_str(&printed)
            .unwrap_or_else(|e| panic!("{}: config_toml() does not parse: {e}\n{printed}", slot.key));
        assert_eq!(&back, table, "{}: config_toml() changed the table", slot.key);
        let json: serde_json::Value =
            serde_json::from_str(&slot.config.config_json()).expect("config_json() is JSON");
        let keys: Vec<&String> = json.as_object().expect("config_json() is an object").keys().collect();
        let mut expected: Vec<&String> = table.keys().collect();
        let mut got = keys.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{}: config_json() changed the keys", slot.key);
    }
}
