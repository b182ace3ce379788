//! The validated configuration: typed values only, every choice an enum, every default applied.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A string did not name one of the accepted choices of a config enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of {}, found {found:?}", quoted(.expected))]
pub struct ParseChoiceError {
    /// The rejected text.
    pub found: String,
    /// Every accepted spelling.
    pub expected: &'static [&'static str],
}

/// `"a", "b" or "c"`, for messages listing the accepted spellings.
pub(crate) fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Declares a fieldless enum spelled in the config file by fixed strings, with `as_str`,
/// `Display` and `FromStr`, so the spelling lives in exactly one place.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every spelling accepted in the config file, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The spelling used in the config file.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseChoiceError;

            fn from_str(s: &str) -> Result<Self, ParseChoiceError> {
                match s {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err(ParseChoiceError { found: s.to_owned(), expected: Self::NAMES }),
                }
            }
        }
    };
}

choice! {
    /// How the XDP program is attached to the interface.
    pub enum XdpMode {
        /// In the driver: fastest, fails if the driver has no XDP support.
        Native = "native",
        /// In the generic network stack: works everywhere, slower.
        Generic = "generic",
        /// Native, falling back to generic when the driver refuses.
        Auto = "auto",
    }
}

choice! {
    /// Verbosity of the daemon's own log.
    pub enum LogLevel {
        /// Errors only.
        Error = "error",
        /// Errors and warnings.
        Warn = "warn",
        /// State changes and lifecycle events (the default).
        Info = "info",
        /// Every check result.
        Debug = "debug",
        /// Everything.
        Trace = "trace",
    }
}

choice! {
    /// Verbosity of the aya-log output of the XDP program; anything above `off` costs
    /// per-packet work, so keep it for debugging.
    pub enum XdpLogLevel {
        /// No logging from the XDP program (the default).
        Off = "off",
        /// Errors only.
        Error = "error",
        /// Errors and warnings.
        Warn = "warn",
        /// Informational messages.
        Info = "info",
        /// Per-packet debugging.
        Debug = "debug",
        /// Everything.
        Trace = "trace",
    }
}

choice! {
    /// Transport protocol of a service.
    pub enum Protocol {
        /// TCP.
        Tcp = "tcp",
        /// UDP.
        Udp = "udp",
    }
}

choice! {
    /// How packets reach a backend.
    pub enum Mode {
        /// Direct server return: only the destination MAC is rewritten; the backend owns
        /// the VIP on a loopback and answers the client directly.
        Dsr = "dsr",
        /// IP-in-IP (or IPv6) encapsulation to the backend, which decapsulates and answers
        /// the client directly.
        Tunnel = "tunnel",
        /// Destination NAT: replies come back through the load balancer.
        Nat = "nat",
    }
}

choice! {
    /// What the XDP program does with a packet for a service that has no usable backend.
    pub enum NoBackendPolicy {
        /// Drop the packet (the default).
        Drop = "drop",
        /// Hand the packet to the kernel stack.
        Pass = "pass",
        /// Forward to every configured backend as if all were up: better to try a backend
        /// the checks think is down than to fail every request.
        FailOpen = "fail_open",
    }
}

choice! {
    /// Whether traffic returns on its own to a better tier once it recovers.
    pub enum FailbackPolicy {
        /// Fail back after `failback_hold` of continuous health (the default).
        Auto = "auto",
        /// Stay on the current tier until an operator asks for failback.
        Manual = "manual",
    }
}

choice! {
    /// What happens to established flows when traffic fails back to a better tier.
    pub enum ExistingFlowsPolicy {
        /// Flows stay on the backend that took them; only new flows fail back (the default).
        Stay = "stay",
        /// Flows are re-picked and move to the better tier.
        Move = "move",
    }
}

choice! {
    /// The `type` of a health check, before its type-specific keys are attached (see
    /// [`CheckKind`]).
    pub enum CheckType {
        /// TCP connect, optionally sending bytes and matching a reply prefix.
        Tcp = "tcp",
        /// HTTP request.
        Http = "http",
        /// HTTP request over TLS.
        Https = "https",
        /// UDP request, matching a reply prefix.
        Udp = "udp",
        /// A command run by the daemon.
        Exec = "exec",
        /// No check: backends are always considered up.
        None = "none",
    }
}

/// The whole validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from (used in messages).
    pub file: PathBuf,
    /// Interfaces the XDP program is attached to (at least one; `interface` in the file:
    /// a name or a list).
    pub interfaces: Vec<String>,
    /// How the XDP program is attached.
    pub xdp_mode: XdpMode,
    /// Connection-table size, in flows.
    pub flow_capacity: u32,
    /// bpffs directory where the maps and program links are pinned.
    pub pin_dir: PathBuf,
    /// Path of the control socket.
    pub control_socket: PathBuf,
    /// Address of the metrics endpoint; `None` means no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Daemon log level.
    pub log_level: LogLevel,
    /// Log level inside the XDP program.
    pub xdp_log_level: XdpLogLevel,
    /// Detach the XDP program when the daemon exits (otherwise it keeps forwarding with
    /// the last tables).
    pub detach_on_exit: bool,
    /// Egress MTU used to check that encapsulated packets fit; 0 disables the check.
    pub mtu: u32,
    /// Outer source addresses for tunnel mode.
    pub tunnel: TunnelConfig,
    /// The services, in file order.
    pub services: Vec<ServiceConfig>,
}

impl Config {
    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Outer source ranges for tunnel mode; the outer header family is the backend's family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Network and prefix length for IPv4 outer headers (prefix 16..=32).
    pub source_v4: Option<(Ipv4Addr, u8)>,
    /// Network and prefix length for IPv6 outer headers (prefix 96..=128).
    pub source_v6: Option<(Ipv6Addr, u8)>,
}

/// The destination ports a service matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// One port.
    Port(u16),
    /// Every port of the VIP for the protocol.
    All,
}

impl PortMatch {
    /// Whether a packet to `port` belongs to this service.
    pub const fn matches(self, port: u16) -> bool {
        match self {
            Self::Port(p) => p == port,
            Self::All => true,
        }
    }

    /// The single port, if the service has one.
    pub const fn port(self) -> Option<u16> {
        match self {
            Self::Port(p) => Some(p),
            Self::All => None,
        }
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(p) => write!(f, "{p}"),
            Self::All => f.write_str("all"),
        }
    }
}

/// One `[[service]]`: a VIP, port and protocol balanced over backends.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Unique name, `[a-z0-9_-]+`, at most 32 characters.
    pub name: String,
    /// Virtual IP clients connect to.
    pub vip: IpAddr,
    /// Destination port(s).
    pub port: PortMatch,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Forwarding mode.
    pub mode: Mode,
    /// Maglev table size: a prime in 257..=16777213.
    pub table_size: u32,
    /// What to do when no backend is usable.
    pub no_backend: NoBackendPolicy,
    /// Whether traffic fails back to a recovered better tier on its own.
    pub failback: FailbackPolicy,
    /// How long a better tier must stay healthy before automatic failback.
    pub failback_hold: Duration,
    /// The usable set is the single best backend (a database primary).
    pub exactly_one: bool,
    /// A tier is used only if at least this many of its backends are up (>= 1).
    pub min_up: u32,
    /// When the best tier is partially failed, add lower tiers to it.
    pub spill: bool,
    /// What happens to established flows on failback.
    pub existing_flows_on_failback: ExistingFlowsPolicy,
    /// How long a removed or disabled backend keeps its established flows.
    pub drain_timeout: Duration,
    /// Ramp-up time of a recovered backend's weight; zero means off.
    pub slow_start: Duration,
    /// In nat mode, a SYN answered by RST marks the backend suspect.
    pub passive_reset: bool,
    /// The service's effective health check (defaults and service keys merged).
    pub check: CheckConfig,
    /// The backends, in file order.
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// One `[[service.backend]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Name, unique within the service.
    pub name: String,
    /// Backend address.
    pub address: IpAddr,
    /// Destination port after NAT (nat mode only); `None` keeps the service port.
    pub port: Option<u16>,
    /// Relative share of new flows, 0..=65535; 0 takes no new flows.
    pub weight: u32,
    /// 0 is the primary (best) tier, 1 the first backup, and so on.
    pub tier: u32,
    /// The backend's effective health check (defaults, service and backend keys merged).
    pub check: CheckConfig,
}

/// A complete health check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// What is checked, with the keys specific to that type.
    pub kind: CheckKind,
    /// Time between checks while the state is stable.
    pub interval: Duration,
    /// Time between checks while a state change is pending.
    pub fast_interval: Duration,
    /// How long one check may take; at most `interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up (>= 1).
    pub rise: u32,
    /// Consecutive failures that bring a backend down (>= 1).
    pub fall: u32,
    /// Consecutive refused connections that bring a backend down (>= 1).
    pub fall_refused: u32,
    /// Random spread of the interval, in percent (0..=50).
    pub jitter_percent: u8,
    /// Port to check instead of the backend's.
    pub port: Option<u16>,
    /// Address to check instead of the backend's.
    pub address: Option<IpAddr>,
}

/// What a health check does, with the keys that only make sense for its type.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// TCP connect.
    Tcp {
        /// Bytes written after connecting.
        send: Option<String>,
        /// Prefix the reply must start with.
        expect: Option<String>,
        /// `half_open = true`: a SYN answered by a SYN-ACK, no connection (needs
        /// CAP_NET_RAW; cannot send or expect bytes).
        half_open: bool,
    },
    /// HTTP or HTTPS request.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// Request method.
        method: String,
        /// `Host` header; `None` uses the checked address.
        host: Option<String>,
        /// Statuses counted as healthy.
        status: StatusSet,
        /// Substring the response body must contain.
        body: Option<String>,
        /// Whether the request goes over TLS (`type = "https"`).
        tls: bool,
        /// Whether the server certificate is verified (HTTPS only).
        tls_verify: bool,
    },
    /// UDP request.
    Udp {
        /// Datagram sent to the backend.
        send: String,
        /// Prefix the reply must start with.
        expect: Option<String>,
    },
    /// A command run by the daemon; exit status 0 means healthy. The backend address is
    /// passed in the environment.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// No check: the backend is always up.
    None,
}

impl CheckKind {
    /// The check's `type` as spelled in the config file.
    pub const fn check_type(&self) -> CheckType {
        match self {
            Self::Tcp { .. } => CheckType::Tcp,
            Self::Http { tls: false, .. } => CheckType::Http,
            Self::Http { tls: true, .. } => CheckType::Https,
            Self::Udp { .. } => CheckType::Udp,
            Self::Exec { .. } => CheckType::Exec,
            Self::None => CheckType::None,
        }
    }
}

/// HTTP statuses counted as healthy: a set of inclusive ranges, written `"200"`,
/// `"200-399"` or `"200,204,300-399"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<RangeInclusive<u16>>,
}

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }

    /// The ranges, in the order written.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }
}

impl Default for StatusSet {
    /// 200-399: success and redirects.
    fn default() -> Self {
        Self {
            ranges: vec![200..=399],
        }
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// A status set string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected HTTP statuses (100..=599) such as \"200\", \"200-399\" or \"200,204,300-399\"; {problem}"
)]
pub struct ParseStatusSetError {
    /// What is wrong with the text.
    pub problem: String,
}

impl FromStr for StatusSet {
    type Err = ParseStatusSetError;

    fn from_str(s: &str) -> Result<Self, ParseStatusSetError> {
        let fail = |problem: String| ParseStatusSetError { problem };
        let status = |t: &str| -> Result<u16, ParseStatusSetError> {
            let t = t.trim();
            match t.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(code),
                Ok(code) => Err(fail(format!("{code} is not an HTTP status"))),
                Err(_) => Err(fail(format!("{t:?} is not a number"))),
            }
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            if part.trim().is_empty() {
                return Err(fail(format!("found an empty item in {s:?}")));
            }
            let range = match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (status(lo)?, status(hi)?);
                    if lo > hi {
                        return Err(fail(format!("range {lo}-{hi} is reversed")));
                    }
                    lo..=hi
                }
                None => {
                    let code = status(part)?;
                    code..=code
                }
            };
            ranges.push(range);
        }
        Ok(Self { ranges })
    }
}
