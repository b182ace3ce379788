//! The configuration file: TOML parsed into raw serde structs, then validated into [`Config`].
//!
//! Parsing happens in two steps, as in sozu: `raw` mirrors the file with
//! `deny_unknown_fields`, so a misspelt key is an error rather than a silently ignored
//! setting; `validate` turns it into typed values (durations, addresses, enums) and
//! checks the rules that span several keys. Every error names the file, line and key, and
//! validation reports all of them at once so `failover check` can list every problem:
//!
//! ```text
//! failover.toml:42: service[1].backend[0].weight: expected a weight in 0..=65535 (0 takes no new flows), found 70000
//! ```
//!
//! A bad file is never replaced by defaults: at start it is fatal, at reload it is rejected
//! and the running configuration stays.

mod check;
mod duration;
mod error;
mod locate;
mod raw;
mod service;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use duration::{DurationError, PercentError, format_duration, parse_duration, parse_percent};
pub use error::{ConfigError, LocatedError};
pub use types::{
    BackendConfig, CheckConfig, CheckKind, CheckType, Config, ExistingFlowsPolicy, FailbackPolicy,
    LogLevel, Mode, NoBackendPolicy, ParseChoiceError, ParseStatusSetError, PortMatch, Protocol,
    ServiceConfig, StatusSet, TunnelConfig, XdpLogLevel, XdpMode,
};

impl Config {
    /// Reads and validates the configuration file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`] with every
    /// problem found if it is not a valid configuration.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration `text`; `path` is the file name used in error
    /// messages and stored in [`Config::file`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] with every problem found. A TOML syntax error, an unknown key
    /// or a value of the wrong TOML type stops parsing, so it is reported alone.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let source = error::Source::new(path, text);
        let raw: raw::FileConfig = toml::from_str(text)
            .map_err(|e| source.invalid(vec![locate::toml_error(&source, &e)]))?;
        validate::validate(&raw, &source, path.to_path_buf())
    }
}
