//! Configuration errors, each located at a file, line and key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
///
/// Displays as `FILE:LINE: KEY: message`, the format editors and `grep -n` understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    /// The configuration file.
    pub file: PathBuf,
    /// Line of the offending key or value, from 1.
    pub line: usize,
    /// Column (in characters) of the offending key or value, from 1.
    pub column: usize,
    /// Dotted path of the key, such as `service[1].backend[0].weight`; empty when the
    /// problem is not inside a key (a TOML syntax error between keys).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// A configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration. Every problem found is listed,
    /// in file order; `Display` prints one per line.
    #[error("{}", render(.errors))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The problems, sorted by position; never empty.
        errors: Vec<LocatedError>,
    },
}

impl ConfigError {
    /// The located problems (empty for [`ConfigError::Read`]).
    pub fn errors(&self) -> &[LocatedError] {
        match self {
            Self::Read { .. } => &[],
            Self::Invalid { errors, .. } => errors,
        }
    }
}

fn render(errors: &[LocatedError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// The text of a configuration file, with what is needed to turn byte offsets into lines.
pub(crate) struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            text,
            line_starts,
        }
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// Line and column (both from 1) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    /// The text of line `line` (from 1), without its newline.
    pub(crate) fn line_text(&self, line: usize) -> &'a str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&next| next - 1);
        self.text[start..end].trim_end_matches('\r')
    }

    /// A located error at the start of `span`.
    pub(crate) fn error(
        &self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> LocatedError {
        let (line, column) = self.position(span.start);
        LocatedError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The final error from a list of problems: sorted by position, exact repeats (from a
    /// shared `[defaults.check]` validated for every service) removed.
    pub(crate) fn invalid(&self, mut errors: Vec<LocatedError>) -> ConfigError {
        errors.sort_by_key(|e| (e.line, e.column));
        let mut unique: Vec<LocatedError> = Vec::with_capacity(errors.len());
        for e in errors {
            if !unique.contains(&e) {
                unique.push(e);
            }
        }
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            errors: unique,
        }
    }
}
