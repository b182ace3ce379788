//! The control protocol: one JSON request line in, one JSON response line out, per connection.
//!
//! Every message is a single line of JSON terminated by `\n`. The client connects, writes
//! one [`Request`], reads one [`Response`], and the server closes the connection: no
//! sessions, no framing beyond the newline, nothing to get out of step.
//!
//! ```text
//! -> {"command":"drain","service":"web","backend":"web-2"}
//! <- {"result":"done","message":"web/web-2: draining"}
//! ```
//!
//! [`Status`] is also what `failover status --json` prints: its field names are a stable,
//! documented interface. Add fields rather than rename or remove them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a client asks the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The state of every service and backend, counters and switch times: answered with
    /// [`Response::Status`].
    Status,
    /// Recent state changes, oldest first: answered with [`Response::Events`].
    Events {
        /// At most this many of the newest events; `None` means every kept event.
        limit: Option<usize>,
    },
    /// Stop giving `backend` new flows; its existing flows stay on it.
    Drain {
        /// Service name, as in the config.
        service: String,
        /// Backend name, as in the config.
        backend: String,
    },
    /// Take `backend` out of service: no new flows, and its existing flows move elsewhere as
    /// the service's `existing_flows` policy says.
    Disable {
        /// Service name, as in the config.
        service: String,
        /// Backend name, as in the config.
        backend: String,
    },
    /// Undo [`Request::Drain`] or [`Request::Disable`]: health checks decide again.
    Enable {
        /// Service name, as in the config.
        service: String,
        /// Backend name, as in the config.
        backend: String,
    },
    /// Move `service` back to its preferred tier now (for a manual failback policy).
    Failback {
        /// Service name, as in the config.
        service: String,
    },
    /// Re-read the config file and apply the differences; a bad file is rejected and the
    /// running config stays.
    Reload,
    /// Which backend a packet from `client` to `service` goes to, and why: answered with
    /// [`Response::Explain`].
    Explain {
        /// Service name, as in the config.
        service: String,
        /// The client's address and source port.
        client: SocketAddr,
    },
}

/// What the daemon answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(Status),
    /// The answer to [`Request::Events`].
    Events {
        /// The events, oldest first.
        events: Vec<EventView>,
    },
    /// An action ([`Request::Drain`], [`Request::Reload`], ...) was carried out.
    Done {
        /// What was done, for the operator (one line).
        message: String,
    },
    /// The answer to [`Request::Explain`].
    Explain(Explanation),
    /// The request failed; nothing was changed.
    Error {
        /// What went wrong and, where possible, what to do about it (one line).
        message: String,
    },
}

/// The daemon's state: the payload of [`Response::Status`] and the output of
/// `failover status --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Status {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The interface the XDP program is attached to.
    pub interface: String,
    /// Seconds since the daemon started; rates are computed over differences of it.
    pub uptime_secs: f64,
    /// Every service, in config order.
    pub services: Vec<ServiceStatus>,
    /// The packet path's counters (drop and pass reasons, ...), cumulative since load.
    pub counters: Vec<CounterView>,
    /// How long switching a service's table took, in microseconds; `None` before the
    /// first switch.
    pub switch_time_us: Option<SwitchTimes>,
}

/// Statistics of table switch times, in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SwitchTimes {
    /// The most recent switch.
    pub last: u64,
    /// The median of the kept samples.
    pub median: u64,
    /// The slowest of the kept samples.
    pub max: u64,
    /// How many samples `median` and `max` are computed over.
    pub samples: usize,
    /// Every switch since the daemon started, as a histogram: `buckets[i]` counts the
    /// switches that took more than `bounds_us[i - 1]` and at most `bounds_us[i]`
    /// microseconds; the last bucket (one more than the bounds) counts the slower ones.
    #[serde(default)]
    pub bounds_us: Vec<u64>,
    /// Counts per bucket (see `bounds_us`).
    #[serde(default)]
    pub buckets: Vec<u64>,
    /// Sum of every switch time since the start, in microseconds.
    #[serde(default)]
    pub sum_us: u64,
}

/// One packet-path counter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CounterView {
    /// The counter's name, e.g. `drop_no_backend` (`failover_common` `Counter::name`).
    pub name: String,
    /// Its value, summed over CPUs, cumulative since the program was loaded.
    pub value: u64,
}

/// One service's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    /// Service name, as in the config.
    pub name: String,
    /// The virtual IP address, e.g. `198.18.0.10` or `2001:db8::10`.
    pub vip: String,
    /// The port, e.g. `80`, or `all` for a service that matches every port.
    pub port: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Forwarding mode, e.g. `dsr`, `tunnel`, `nat`.
    pub mode: String,
    /// The tier taking new flows now; `None` when no tier is usable.
    pub active_tier: Option<u32>,
    /// Whether the service is in panic (no usable backend: its no-backend policy applies).
    pub panic: bool,
    /// Why the current selection was made, e.g. `tier 0 healthy`.
    pub reason: String,
    /// Traffic to the service, cumulative.
    pub traffic: TrafficView,
    /// Every backend of the service, in config order.
    pub backends: Vec<BackendStatusView>,
}

/// Cumulative traffic counters; clients compute rates from two samples.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TrafficView {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (as received, before encapsulation).
    pub bytes: u64,
    /// New flows (connection-table entries) created.
    pub new_flows: u64,
}

/// One backend's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BackendStatusView {
    /// Backend name, as in the config.
    pub name: String,
    /// The backend's address (and port, where the config gives one).
    pub address: String,
    /// `up`, `down`, `down (held 20s)`, `draining`, `disabled` or `unknown`.
    pub state: String,
    /// Seconds since the state last changed.
    pub since_secs: f64,
    /// Why it is in this state, e.g. `connect refused` or `3 checks passed`.
    pub reason: String,
    /// How long the last health check took, in milliseconds; `None` before the first one
    /// or for backends without checks.
    pub last_check_latency_ms: Option<f64>,
    /// The backend's tier (0 is preferred).
    pub tier: u32,
    /// The configured weight.
    pub weight: u32,
    /// The weight the backend has in the service's current Maglev table; `None` when it is
    /// not in the table.
    pub table_weight: Option<u32>,
    /// Whether the backend takes new flows now.
    pub new_flows: bool,
    /// Traffic to this backend, cumulative.
    pub traffic: TrafficView,
}

/// One entry of the event log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventView {
    /// Seconds since the event.
    pub age_secs: f64,
    /// The service it concerns.
    pub service: String,
    /// The backend it concerns; `None` for service-wide events (a new selection).
    pub backend: Option<String>,
    /// What happened, e.g. `up -> down: connect refused`.
    pub what: String,
}

/// Where a client's packets to a service go, and why: the payload of
/// [`Response::Explain`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Service name.
    pub service: String,
    /// The client address and port that was asked about.
    pub client: String,
    /// The backend the packets go to; `None` when they are dropped or passed.
    pub backend: Option<String>,
    /// How the backend was chosen, e.g. `connection table hit`,
    /// `Maglev slot 1234 of 65537 (hash 0x...)`, `panic: no usable backend, policy drop`.
    pub how: String,
    /// The tier of the chosen backend.
    pub tier: Option<u32>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn traffic(n: u64) -> TrafficView {
        TrafficView {
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
        }
    }

    pub(crate) fn sample_status() -> Status {
        Status {
            version: "0.1.0".into(),
            interface: "eth0".into(),
            uptime_secs: 12.5,
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "198.18.0.10".into(),
                port: "80".into(),
                protocol: "tcp".into(),
                mode: "dsr".into(),
                active_tier: Some(0),
                panic: false,
                reason: "tier 0 healthy".into(),
                traffic: traffic(100),
                backends: vec![BackendStatusView {
                    name: "web-1".into(),
                    address: "10.0.0.1".into(),
                    state: "up".into(),
                    since_secs: 3.5,
                    reason: "3 checks passed".into(),
                    last_check_latency_ms: Some(0.4),
                    tier: 0,
                    weight: 100,
                    table_weight: Some(100),
                    new_flows: true,
                    traffic: traffic(100),
                }],
            }],
            counters: vec![CounterView {
                name: "drop_no_backend".into(),
                value: 3,
            }],
            switch_time_us: Some(SwitchTimes {
                last: 120,
                median: 100,
                max: 300,
                samples: 12,
                bounds_us: vec![100, 1000],
                buckets: vec![4, 8, 0],
                sum_us: 1500,
            }),
        }
    }

    fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let line = serde_json::to_string(value).unwrap();
        assert!(!line.contains('\n'), "one line: {line}");
        let back: T = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, value);
        line
    }

    #[test]
    fn every_request_round_trips() {
        let cases = [
            (Request::Status, r#"{"command":"status"}"#),
            (
                Request::Events { limit: Some(5) },
                r#"{"command":"events","limit":5}"#,
            ),
            (
                Request::Events { limit: None },
                r#"{"command":"events","limit":null}"#,
            ),
            (
                Request::Drain {
                    service: "web".into(),
                    backend: "web-2".into(),
                },
                r#"{"command":"drain","service":"web","backend":"web-2"}"#,
            ),
            (
                Request::Disable {
                    service: "web".into(),
                    backend: "web-2".into(),
                },
                r#"{"command":"disable","service":"web","backend":"web-2"}"#,
            ),
            (
                Request::Enable {
                    service: "web".into(),
                    backend: "web-2".into(),
                },
                r#"{"command":"enable","service":"web","backend":"web-2"}"#,
            ),
            (
                Request::Failback {
                    service: "web".into(),
                },
                r#"{"command":"failback","service":"web"}"#,
            ),
            (Request::Reload, r#"{"command":"reload"}"#),
            (
                Request::Explain {
                    service: "web".into(),
                    client: "[2001:db8::1]:4321".parse().unwrap(),
                },
                r#"{"command":"explain","service":"web","client":"[2001:db8::1]:4321"}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(round_trip(&request), json);
        }
    }

    #[test]
    fn events_limit_may_be_left_out() {
        let r: Request = serde_json::from_str(r#"{"command":"events"}"#).unwrap();
        assert_eq!(r, Request::Events { limit: None });
    }

    #[test]
    fn every_response_round_trips() {
        let responses = [
            Response::Status(sample_status()),
            Response::Events {
                events: vec![EventView {
                    age_secs: 12.3,
                    service: "web".into(),
                    backend: Some("web-2".into()),
                    what: "up -> down: connect refused".into(),
                }],
            },
            Response::Done {
                message: "web/web-2: draining".into(),
            },
            Response::Explain(Explanation {
                service: "web".into(),
                client: "203.0.113.5:4321".into(),
                backend: Some("web-1".into()),
                how: "Maglev slot 1234 of 65537 (hash 0x1f2e3d4c)".into(),
                tier: Some(0),
            }),
            Response::Error {
                message: "no service named \"api\"".into(),
            },
        ];
        let tags = ["status", "events", "done", "explain", "error"];
        for (response, tag) in responses.iter().zip(tags) {
            let line = round_trip(response);
            assert!(
                line.starts_with(&format!(r#"{{"result":"{tag}""#)),
                "{line}"
            );
        }
    }

    #[test]
    fn status_json_field_names_are_stable() {
        // `failover status --json` prints this: scripts depend on these names.
        let json = serde_json::to_string(&sample_status()).unwrap();
        for snippet in [
            r#"{"version":"0.1.0","interface":"eth0","uptime_secs":12.5,"services":[{"name":"web","vip":"198.18.0.10","port":"80","protocol":"tcp","mode":"dsr","active_tier":0,"panic":false,"reason":"tier 0 healthy","traffic":{"packets":100,"bytes":10000,"new_flows":10},"backends":[{"#,
            r#"{"name":"web-1","address":"10.0.0.1","state":"up","since_secs":3.5,"reason":"3 checks passed","last_check_latency_ms":0.4,"tier":0,"weight":100,"table_weight":100,"new_flows":true,"traffic":{"packets":100,"bytes":10000,"new_flows":10}}"#,
            r#""counters":[{"name":"drop_no_backend","value":3}],"switch_time_us":{"last":120,"median":100,"max":300,"samples":12,"bounds_us":[100,1000],"buckets":[4,8,0],"sum_us":1500}}"#,
        ] {
            assert!(json.contains(snippet), "missing {snippet}\nin {json}");
        }
    }

    #[test]
    fn status_response_is_flat() {
        let json = serde_json::to_string(&Response::Status(sample_status())).unwrap();
        assert!(
            json.starts_with(r#"{"result":"status","version":"0.1.0","#),
            "{json}"
        );
    }
}
