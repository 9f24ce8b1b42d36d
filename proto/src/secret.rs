//! [`Secret`]: a credential read from configuration (agent token, Redis password,
//! cluster secret) that `Debug` never shows.

use std::fmt;

/// A string that must never reach a log. `Debug` prints `Secret(***)` (or `Secret("")`
/// when empty, since an empty credential is the usual misconfiguration); there is no
/// `Display`, so it cannot end up in a formatted message by accident.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the few call sites that send it; they never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(\"\")" } else { "Secret(***)" })
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_masks_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Secret::default()), "Secret(\"\")");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn deserializes_from_a_string() {
        #[derive(serde::Deserialize)]
        struct Config {
            password: Secret,
        }
        let config: Config = toml::from_str(r#"password = "hunter2""#).unwrap();
        assert_eq!(config.password, Secret::from("hunter2"));
        assert!(toml::from_str::<Config>("password = 3").is_err());
    }
}
