//! The file as written: serde structs mirroring the TOML, unknown keys denied.
//!
//! Every key is optional and spanned, and values that need checking (ranges, durations,
//! addresses, choices) are kept as plain integers and strings: validation then reports
//! every problem with its line instead of stopping at the first one, as serde would.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// A spanned optional key. Tables are not spanned: toml has no span for a table that is
/// only implied by a dotted header such as `[defaults.check]`.
pub(crate) type Key<T> = Option<Spanned<T>>;

/// The top level of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub interface: Key<Interfaces>,
    pub xdp_mode: Key<String>,
    pub flow_capacity: Key<i64>,
    pub pin_dir: Key<String>,
    pub control_socket: Key<String>,
    pub metrics_listen: Key<String>,
    pub log_level: Key<String>,
    pub xdp_log_level: Key<String>,
    pub detach_on_exit: Key<bool>,
    pub mtu: Key<i64>,
    pub tunnel: Option<RawTunnel>,
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub service: Vec<Spanned<RawService>>,
}

/// `[tunnel]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTunnel {
    pub source_v4: Key<String>,
    pub source_v6: Key<String>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub check: Option<RawCheck>,
}

/// One `[[service]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: Key<String>,
    pub vip: Key<String>,
    pub port: Key<RawPort>,
    pub protocol: Key<String>,
    pub mode: Key<String>,
    pub table_size: Key<i64>,
    pub no_backend: Key<String>,
    pub failback: Key<String>,
    pub failback_hold: Key<DurationText>,
    pub exactly_one: Key<bool>,
    pub min_up: Key<i64>,
    pub spill: Key<bool>,
    pub existing_flows_on_failback: Key<String>,
    pub drain_timeout: Key<DurationText>,
    pub slow_start: Key<DurationText>,
    pub passive_reset: Key<bool>,
    pub check: Option<RawCheck>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
}

/// One `[[service.backend]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub name: Key<String>,
    pub address: Key<String>,
    pub port: Key<i64>,
    pub weight: Key<i64>,
    pub tier: Key<i64>,
    pub check: Option<RawCheck>,
}

/// A check table: `[defaults.check]`, `[service.check]` or a backend's `check = { … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    #[serde(rename = "type")]
    pub kind: Key<String>,
    pub interval: Key<DurationText>,
    pub fast_interval: Key<DurationText>,
    pub timeout: Key<DurationText>,
    pub rise: Key<i64>,
    pub fall: Key<i64>,
    pub fall_refused: Key<i64>,
    pub jitter: Key<PercentText>,
    pub port: Key<i64>,
    pub address: Key<String>,
    pub send: Key<String>,
    pub expect: Key<String>,
    pub path: Key<String>,
    pub method: Key<String>,
    pub host: Key<String>,
    pub status: Key<String>,
    pub body: Key<String>,
    pub tls_verify: Key<bool>,
    pub half_open: Key<bool>,
    pub command: Key<Vec<String>>,
}

/// A duration as written (`"500ms"`), parsed during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(TextVisitor(
                "a duration string such as \"500ms\", \"5s\" or \"1m\"",
            ))
            .map(Self)
    }
}

/// A percentage as written (`"10%"`), parsed during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PercentText(pub String);

impl<'de> Deserialize<'de> for PercentText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(TextVisitor("a percentage string such as \"10%\""))
            .map(Self)
    }
}

/// Accepts a string; a value of another type is an error naming what the string holds.
struct TextVisitor(&'static str);

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// A service `port`: a number, or a word (only `"all"` is valid, checked later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawPort {
    Number(i64),
    Word(String),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;

        impl Visitor<'_> for PortVisitor {
            type Value = RawPort;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1..=65535) or \"all\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort::Word(v.to_owned()))
            }
        }

        deserializer.deserialize_any(PortVisitor)
    }
}

/// `interface`: one name, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interfaces(pub Vec<String>);

impl<'de> Deserialize<'de> for Interfaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Interfaces;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an interface name or a list of them, e.g. \"eth0\" or [\"eth0\", \"eth1\"]",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Interfaces, E> {
                Ok(Interfaces(vec![v.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Interfaces, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Interfaces(names))
            }
        }
        d.deserialize_any(V)
    }
}
