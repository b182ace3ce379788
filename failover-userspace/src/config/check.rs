//! Health checks: merging `[defaults.check]`, `[service.check]` and a backend's `check`,
//! then validating the result into a [`CheckConfig`].
//!
//! Each merged key remembers the layer it came from, so an error points at the line and
//! key that actually set the value. A layer that changes `type` drops the type-specific
//! keys of the layers below it: `path` from an http default does not leak into a service
//! that switches to a tcp check.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::duration::format_duration;
use super::raw::{DurationText, Key, PercentText, RawCheck};
use super::types::{CheckConfig, CheckKind, CheckType, StatusSet};
use super::validate::Validator;

/// Used when no layer sets `interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Used when no layer sets `timeout` (capped at the interval).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest interval: below it the checks would cost more than they tell.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const DEFAULT_RISE: i64 = 2;
const DEFAULT_FALL: i64 = 3;
const DEFAULT_FALL_REFUSED: i64 = 1;
const DEFAULT_JITTER_PERCENT: u8 = 10;
const MAX_JITTER_PERCENT: u8 = 50;
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_HTTP_METHOD: &str = "GET";

/// One key's value and the layer (dotted path of a check table) that set it.
struct Set<'a, T> {
    value: &'a Spanned<T>,
    layer: &'a str,
}

// Manual impls: a derive would require `T: Clone`/`T: Copy`.
impl<T> Clone for Set<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Set<'_, T> {}

impl<'a, T> Set<'a, T> {
    fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.layer)
    }

    fn span(&self) -> Range<usize> {
        self.value.span()
    }

    fn get(&self) -> &'a T {
        self.value.get_ref()
    }
}

/// The upper layer's value if it has one, else the lower layer's.
fn pick<'a, T>(lower: Option<Set<'a, T>>, upper: &'a Key<T>, layer: &'a str) -> Option<Set<'a, T>> {
    upper.as_ref().map(|value| Set { value, layer }).or(lower)
}

/// A check with every key resolved through its layers, not yet validated.
#[derive(Clone, Copy, Default)]
pub(crate) struct MergedCheck<'a> {
    kind: Option<Set<'a, String>>,
    interval: Option<Set<'a, DurationText>>,
    fast_interval: Option<Set<'a, DurationText>>,
    timeout: Option<Set<'a, DurationText>>,
    rise: Option<Set<'a, i64>>,
    fall: Option<Set<'a, i64>>,
    fall_refused: Option<Set<'a, i64>>,
    jitter: Option<Set<'a, PercentText>>,
    port: Option<Set<'a, i64>>,
    address: Option<Set<'a, String>>,
    send: Option<Set<'a, String>>,
    expect: Option<Set<'a, String>>,
    path: Option<Set<'a, String>>,
    method: Option<Set<'a, String>>,
    host: Option<Set<'a, String>>,
    status: Option<Set<'a, String>>,
    body: Option<Set<'a, String>>,
    tls_verify: Option<Set<'a, bool>>,
    half_open: Option<Set<'a, bool>>,
    command: Option<Set<'a, Vec<String>>>,
}

impl<'a> MergedCheck<'a> {
    /// The type as written, `"tcp"` when no layer sets it.
    fn type_text(&self) -> &'a str {
        self.kind
            .map_or(CheckType::Tcp.as_str(), |k| k.get().as_str())
    }

    /// This check with the table at `layer` laid over it.
    pub(crate) fn over(&self, layer: &'a str, raw: &'a RawCheck) -> Self {
        let type_changes = raw
            .kind
            .as_ref()
            .is_some_and(|k| k.get_ref() != self.type_text());
        // Type-specific keys of lower layers belong to their type only.
        let lower = if type_changes { Self::default() } else { *self };
        Self {
            kind: pick(self.kind, &raw.kind, layer),
            interval: pick(self.interval, &raw.interval, layer),
            fast_interval: pick(self.fast_interval, &raw.fast_interval, layer),
            timeout: pick(self.timeout, &raw.timeout, layer),
            rise: pick(self.rise, &raw.rise, layer),
            fall: pick(self.fall, &raw.fall, layer),
            fall_refused: pick(self.fall_refused, &raw.fall_refused, layer),
            jitter: pick(self.jitter, &raw.jitter, layer),
            port: pick(self.port, &raw.port, layer),
            address: pick(self.address, &raw.address, layer),
            send: pick(lower.send, &raw.send, layer),
            expect: pick(lower.expect, &raw.expect, layer),
            path: pick(lower.path, &raw.path, layer),
            method: pick(lower.method, &raw.method, layer),
            host: pick(lower.host, &raw.host, layer),
            status: pick(lower.status, &raw.status, layer),
            body: pick(lower.body, &raw.body, layer),
            tls_verify: pick(lower.tls_verify, &raw.tls_verify, layer),
            half_open: pick(lower.half_open, &raw.half_open, layer),
            command: pick(lower.command, &raw.command, layer),
        }
    }

    /// Where the type comes from, for messages about type-specific keys.
    fn type_origin(&self, v: &Validator<'_>) -> String {
        match self.kind {
            Some(k) => format!("set by {} at line {}", k.key("type"), v.line(&k.span())),
            None => "the default type".to_owned(),
        }
    }

    /// Validates the merged check, reporting every problem; `None` if there was one.
    pub(crate) fn build(&self, v: &mut Validator<'_>) -> Option<CheckConfig> {
        let before = v.error_count();
        let check_type = match self.kind {
            Some(k) => match k.get().parse::<CheckType>() {
                Ok(t) => Some(t),
                Err(e) => {
                    v.error(&k.span(), k.key("type"), e.to_string());
                    None
                }
            },
            None => Some(CheckType::Tcp),
        };

        let interval = self.duration(v, self.interval, "interval", DEFAULT_INTERVAL);
        if let (Some(set), Some(interval)) = (self.interval, interval) {
            if interval < MIN_INTERVAL {
                v.error(
                    &set.span(),
                    set.key("interval"),
                    format!(
                        "expected at least {}, found {}",
                        format_duration(MIN_INTERVAL),
                        format_duration(interval)
                    ),
                );
            }
        }
        // Compare other keys with the interval only if it is valid: a bad interval is
        // already reported, and comparing with a stand-in would mislead.
        let interval_known = interval.is_some();
        let interval = interval.unwrap_or(DEFAULT_INTERVAL);

        let timeout = self.duration(v, self.timeout, "timeout", DEFAULT_TIMEOUT.min(interval));
        if let (Some(set), Some(timeout)) = (self.timeout, timeout) {
            if timeout.is_zero() {
                v.error(
                    &set.span(),
                    set.key("timeout"),
                    "expected a duration above zero",
                );
            } else if interval_known && timeout > interval {
                v.error(
                    &set.span(),
                    set.key("timeout"),
                    format!(
                        "timeout {} is longer than interval {} ({}): a check must end before the next one starts",
                        format_duration(timeout),
                        format_duration(interval),
                        self.origin(v, self.interval, "interval"),
                    ),
                );
            }
        }

        let default_fast = (interval / 4).max(MIN_INTERVAL).min(interval);
        let fast_interval = self.duration(v, self.fast_interval, "fast_interval", default_fast);
        if let (Some(set), Some(fast)) = (self.fast_interval, fast_interval) {
            if fast < MIN_INTERVAL || (interval_known && fast > interval) {
                v.error(
                    &set.span(),
                    set.key("fast_interval"),
                    format!(
                        "expected {} up to the interval {} ({}), found {}",
                        format_duration(MIN_INTERVAL),
                        format_duration(interval),
                        self.origin(v, self.interval, "interval"),
                        format_duration(fast)
                    ),
                );
            }
        }

        let count = |v: &mut Validator<'_>, set: Option<Set<'a, i64>>, field, default, what| {
            let Some(set) = set else {
                return Some(default);
            };
            let n = *set.get();
            if (1..=i64::from(u32::MAX)).contains(&n) {
                Some(n)
            } else {
                v.error(
                    &set.span(),
                    set.key(field),
                    format!("expected at least 1 ({what}), found {n}"),
                );
                None
            }
        };
        let rise = count(
            v,
            self.rise,
            "rise",
            DEFAULT_RISE,
            "successes in a row that bring a backend up",
        );
        let fall = count(
            v,
            self.fall,
            "fall",
            DEFAULT_FALL,
            "failures in a row that bring a backend down",
        );
        let fall_refused = count(
            v,
            self.fall_refused,
            "fall_refused",
            DEFAULT_FALL_REFUSED,
            "refused connections in a row that bring a backend down",
        );

        let jitter_percent = match self.jitter {
            None => Some(DEFAULT_JITTER_PERCENT),
            Some(set) => match super::duration::parse_percent(&set.get().0) {
                Ok(p) if p <= MAX_JITTER_PERCENT => Some(p),
                Ok(p) => {
                    v.error(
                        &set.span(),
                        set.key("jitter"),
                        format!("expected 0% to {MAX_JITTER_PERCENT}% of the interval, found {p}%"),
                    );
                    None
                }
                Err(e) => {
                    v.error(&set.span(), set.key("jitter"), e.to_string());
                    None
                }
            },
        };

        let port = match self.port {
            None => Some(None),
            Some(set) => v.port(set.value, &set.key("port")).map(Some),
        };
        let address = match self.address {
            None => Some(None),
            Some(set) => v.address(set.value, &set.key("address")).map(Some),
        };

        let kind = check_type.and_then(|t| self.kind_for(v, t));

        if v.error_count() > before {
            return None;
        }
        Some(CheckConfig {
            kind: kind?,
            interval,
            fast_interval: fast_interval?,
            timeout: timeout?,
            rise: u32::try_from(rise?).ok()?,
            fall: u32::try_from(fall?).ok()?,
            fall_refused: u32::try_from(fall_refused?).ok()?,
            jitter_percent: jitter_percent?,
            port: port?,
            address: address?,
        })
    }

    /// `"service[0].check.interval at line 12"` or `"the default"`, for cross-key messages.
    fn origin(&self, v: &Validator<'_>, set: Option<Set<'a, DurationText>>, field: &str) -> String {
        match set {
            Some(s) => format!("{} at line {}", s.key(field), v.line(&s.span())),
            None => "the default".to_owned(),
        }
    }

    fn duration(
        &self,
        v: &mut Validator<'_>,
        set: Option<Set<'a, DurationText>>,
        field: &str,
        default: Duration,
    ) -> Option<Duration> {
        match set {
            None => Some(default),
            Some(set) => v.duration(set.value, &set.key(field)),
        }
    }

    /// Checks that type-specific keys match `check_type`, and builds the [`CheckKind`].
    fn kind_for(&self, v: &mut Validator<'_>, check_type: CheckType) -> Option<CheckKind> {
        use CheckType as T;
        let before = v.error_count();
        let tcp_udp: &[CheckType] = &[T::Tcp, T::Udp];
        let http: &[CheckType] = &[T::Http, T::Https];
        let strings = [
            ("send", self.send, tcp_udp),
            ("expect", self.expect, tcp_udp),
            ("path", self.path, http),
            ("method", self.method, http),
            ("host", self.host, http),
            ("status", self.status, http),
            ("body", self.body, http),
        ];
        let mut misplaced: Vec<(&str, Range<usize>, String, &[CheckType])> = strings
            .into_iter()
            .filter_map(|(field, set, types)| set.map(|s| (field, s.span(), s.key(field), types)))
            .collect();
        if let Some(s) = self.tls_verify {
            misplaced.push(("tls_verify", s.span(), s.key("tls_verify"), &[T::Https]));
        }
        if let Some(s) = self.command {
            misplaced.push(("command", s.span(), s.key("command"), &[T::Exec]));
        }
        if let Some(s) = self.half_open {
            misplaced.push(("half_open", s.span(), s.key("half_open"), &[T::Tcp]));
        }
        for (field, span, key, types) in misplaced {
            if !types.contains(&check_type) {
                let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
                v.error(
                    &span,
                    key,
                    format!(
                        "`{field}` only applies to {} checks, but this check is {} ({})",
                        names.join(" and "),
                        check_type,
                        self.type_origin(v)
                    ),
                );
            }
        }

        let text = |set: Option<Set<'a, String>>| set.map(|s| s.get().clone());
        let kind = match check_type {
            T::Tcp => {
                let half_open = self.half_open.is_some_and(|s| *s.get());
                if half_open {
                    for (field, set) in [("send", self.send), ("expect", self.expect)] {
                        if let Some(set) = set {
                            v.error(
                                &set.span(),
                                set.key(field),
                                format!(
                                    "`{field}` needs a connection, but this check is half-open (half_open = true \
                                     at line {}: a SYN, no connection): remove `{field}`, or set half_open = false",
                                    self.half_open.map_or(0, |h| v.line(&h.span()))
                                ),
                            );
                        }
                    }
                }
                CheckKind::Tcp {
                    send: text(self.send),
                    expect: text(self.expect),
                    half_open,
                }
            }
            T::Udp => {
                let Some(send) = self.send else {
                    let (span, key) = self.required_at("send");
                    v.error(
                        &span,
                        key,
                        "missing key: a udp check needs `send`, the datagram that asks the backend for a reply",
                    );
                    return None;
                };
                CheckKind::Udp {
                    send: send.get().clone(),
                    expect: text(self.expect),
                }
            }
            T::Http | T::Https => CheckKind::Http {
                path: self.http_path(v),
                method: self.http_method(v),
                host: self.http_host(v),
                status: self.http_status(v),
                body: text(self.body),
                tls: check_type == T::Https,
                tls_verify: self.tls_verify.is_none_or(|s| *s.get()),
            },
            T::Exec => {
                let Some(command) = self.command else {
                    let (span, key) = self.required_at("command");
                    v.error(
                        &span,
                        key,
                        "missing key: an exec check needs `command`, e.g. command = [\"/usr/local/bin/check\", \"--flag\"]",
                    );
                    return None;
                };
                match command.get().first() {
                    Some(program) if !program.trim().is_empty() => {}
                    _ => v.error(
                        &command.span(),
                        command.key("command"),
                        "expected a program and its arguments, e.g. [\"/usr/local/bin/check\"], found an empty program",
                    ),
                }
                CheckKind::Exec {
                    command: command.get().clone(),
                }
            }
            T::None => CheckKind::None,
        };
        (v.error_count() == before).then_some(kind)
    }

    /// Where a missing type-specific key is reported: on the `type` that requires it.
    fn required_at(&self, field: &str) -> (Range<usize>, String) {
        match self.kind {
            Some(k) => (k.span(), k.key(field)),
            None => (0..0, field.to_owned()),
        }
    }

    fn http_path(&self, v: &mut Validator<'_>) -> String {
        let Some(set) = self.path else {
            return DEFAULT_HTTP_PATH.to_owned();
        };
        let path = set.get();
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            v.error(
                &set.span(),
                set.key("path"),
                format!(
                    "expected a request path starting with '/' and without spaces, found {path:?}"
                ),
            );
        }
        path.clone()
    }

    fn http_method(&self, v: &mut Validator<'_>) -> String {
        let Some(set) = self.method else {
            return DEFAULT_HTTP_METHOD.to_owned();
        };
        let method = set.get();
        // RFC 9110 token characters.
        let token = !method.is_empty()
            && method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !token {
            v.error(
                &set.span(),
                set.key("method"),
                format!("expected an HTTP method such as \"GET\" or \"HEAD\", found {method:?}"),
            );
        }
        method.clone()
    }

    fn http_host(&self, v: &mut Validator<'_>) -> Option<String> {
        let set = self.host?;
        let host = set.get();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            v.error(
                &set.span(),
                set.key("host"),
                format!("expected a Host header value such as \"example.org\", found {host:?}"),
            );
        }
        Some(host.clone())
    }

    fn http_status(&self, v: &mut Validator<'_>) -> StatusSet {
        let Some(set) = self.status else {
            return StatusSet::default();
        };
        set.get()
            .parse()
            .unwrap_or_else(|e: super::types::ParseStatusSetError| {
                v.error(&set.span(), set.key("status"), e.to_string());
                StatusSet::default()
            })
    }
}

/// Whether checks of this type connect to a port (and so need one).
pub(crate) const fn needs_port(check_type: CheckType) -> bool {
    matches!(
        check_type,
        CheckType::Tcp | CheckType::Http | CheckType::Https | CheckType::Udp
    )
}
