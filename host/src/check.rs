//! `burrow-host check-config FILE`: everything `run` would refuse, found without
//! starting anything. The file is parsed (unknown keys, types), validated (ranges, files
//! that must exist), then every plugin slot is loaded as `run` loads it: compiled,
//! checked against its world, initialised with its `config`, probed and run against its
//! manifest's test vectors. Errors point at the line of `host.toml` to fix.

use std::path::Path;

use crate::config::{key_line, Config, ConfigError};
use crate::plugins::check::{check_config, SlotReport};

/// Why a config file would not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckConfigError {
    /// Unreadable, or not a valid config (syntax, unknown key, wrong type): the message
    /// has the line and column.
    #[error(transparent)]
    Config(ConfigError),
    /// A value or a plugin the host would refuse, with the key to fix and its line.
    #[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Refused {
        /// The config file.
        file: String,
        /// Where `key` (or its nearest written parent) is in the file; `None` when the
        /// key is left at its default.
        line: Option<usize>,
        /// `plugins.authorizer.config.teams`, `ingress.listen`, ...
        key: String,
        message: String,
    },
}

/// Checks the config file at `path` as `run` would load it; returns the plugins loaded.
pub async fn check_config_file(path: &Path) -> Result<(Config, Vec<SlotReport>), CheckConfigError> {
    let text = Config::read(path).map_err(CheckConfigError::Config)?;
    let config = Config::parse(path, &text).map_err(CheckConfigError::Config)?;
    let refused = |key: String, message: String| {
        let line = key_line(&text, &key).map(|at| at.line);
        CheckConfigError::Refused { file: path.display().to_string(), line, key, message }
    };
    if let Err(err) = config.validate() {
        return Err(match err {
            // `validate` messages start with the key they blame.
            ConfigError::Invalid(message) => match message.split_once(": ") {
                Some((key, rest)) if !key.contains(' ') => refused(key.to_owned(), rest.to_owned()),
                _ => CheckConfigError::Config(ConfigError::Invalid(message)),
            },
            other => CheckConfigError::Config(other),
        });
    }
    match check_config(&config.plugins).await {
        Ok(slots) => Ok((config, slots)),
        Err(err) => {
            let message = err.error.to_string();
            let key = named_config_key(&text, &err.key, &message).unwrap_or(err.key);
            Err(refused(key, message))
        }
    }
}

/// A plugin's `init` error usually names the config key it objects to, in backquotes
/// (serde's ``unknown field `temas` ``): the deeper key when the file has it.
fn named_config_key(text: &str, config_key: &str, message: &str) -> Option<String> {
    if !config_key.ends_with(".config") {
        return None;
    }
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| format!("{config_key}.{name}"))
        .find(|key| key_line(text, key).is_some_and(|at| at.full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_the_message_names_is_the_key_to_blame() {
        let text =
            "[plugins.authorizer]\nsource = \"x.wasm\"\n[plugins.authorizer.config]\nteams = {}\ntemas = 1\n";
        let key = "plugins.authorizer.config";
        assert_eq!(
            named_config_key(text, key, "invalid config: unknown field `temas`, expected `teams`"),
            Some("plugins.authorizer.config.temas".into())
        );
        assert_eq!(named_config_key(text, key, "invalid config: missing field `groups`"), None);
        assert_eq!(named_config_key(text, "plugins.authorizer.source", "`temas`"), None);
    }
}
