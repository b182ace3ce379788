//! Tests of the whole path from TOML text to `Config` or located errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "test.toml";

/// Joins lines, so a test can count them: `lines[i]` is line `i + 1`.
fn lines(lines: &[&str]) -> String {
    lines.join("\n") + "\n"
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn parse_ok(text: &str) -> Config {
    Config::parse(text, FILE).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

/// Every error, as displayed.
fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, FILE) {
        Ok(config) => panic!("expected errors, got a valid config: {config:#?}"),
        Err(e) => {
            // Display is the errors, one per line.
            let shown = e.to_string();
            let each: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
            assert_eq!(shown, each.join("\n"));
            each
        }
    }
}

/// Asserts that one error is `test.toml:LINE: KEY: …fragment…`, and returns all errors.
#[track_caller]
fn assert_error(text: &str, line: usize, key: &str, fragment: &str) -> Vec<String> {
    let all = errors(text);
    let prefix = format!("{FILE}:{line}: {key}: ");
    assert!(
        all.iter()
            .any(|e| e.starts_with(&prefix) && e.contains(fragment)),
        "no error `{prefix}…{fragment}…` among:\n{}",
        all.join("\n")
    );
    all
}

/// Asserts that the only error is `test.toml:LINE: KEY: …fragment…`.
#[track_caller]
fn assert_only_error(text: &str, line: usize, key: &str, fragment: &str) {
    let all = assert_error(text, line, key, fragment);
    assert_eq!(all.len(), 1, "expected one error, got:\n{}", all.join("\n"));
}

/// `text` with `extra` inserted after its first line (`interface = …`), shifting the rest
/// down: tables such as `[defaults.check]` must come after the top-level keys.
fn after_interface(text: &str, extra: &[&str]) -> String {
    let (first, rest) = text.split_once('\n').unwrap();
    format!("{first}\n{}{rest}", lines(extra))
}

/// A valid service at lines 2..=9, followed by `extra` service keys and then a backend.
fn service_with(extra: &[&str]) -> String {
    let mut text = vec![
        "interface = \"eth0\"",     // 1
        "[[service]]",              // 2
        "name = \"web\"",           // 3
        "vip = \"198.18.0.10\"",    // 4
        "port = 80",                // 5
        "mode = \"dsr\"",           // 6
        "[[service.backend]]",      // 7
        "name = \"web-1\"",         // 8
        "address = \"198.18.1.1\"", // 9
    ];
    // Service keys must come before the backend table: insert them after line 6.
    for (i, line) in extra.iter().enumerate() {
        text.insert(6 + i, line);
    }
    lines(&text)
}

#[test]
fn complete_config_parses_into_typed_values() {
    let text = lines(&[
        "interface = \"fo-lb0\"",
        "xdp_mode = \"native\"",
        "flow_capacity = 2048",
        "pin_dir = \"/sys/fs/bpf/test\"",
        "control_socket = \"/run/test.sock\"",
        "metrics_listen = \"[::1]:9200\"",
        "log_level = \"debug\"",
        "xdp_log_level = \"warn\"",
        "detach_on_exit = true",
        "mtu = 9000",
        "[tunnel]",
        "source_v4 = \"198.18.250.0/24\"",
        "source_v6 = \"2001:db8:ffff::/112\"",
        "[defaults.check]",
        "interval = \"2s\"",
        "rise = 4",
        "[[service]]",
        "name = \"db\"",
        "vip = \"198.18.0.20\"",
        "port = 5432",
        "protocol = \"tcp\"",
        "mode = \"nat\"",
        "table_size = 257",
        "no_backend = \"fail_open\"",
        "failback = \"manual\"",
        "failback_hold = \"1.5s\"",
        "exactly_one = true",
        "min_up = 1",
        "spill = false",
        "existing_flows_on_failback = \"move\"",
        "drain_timeout = \"1m\"",
        "slow_start = \"250ms\"",
        "passive_reset = false",
        "[service.check]",
        "type = \"https\"",
        "fast_interval = \"100ms\"",
        "timeout = \"1s\"",
        "fall = 5",
        "fall_refused = 2",
        "jitter = \"20%\"",
        "port = 8008",
        "address = \"198.18.9.9\"",
        "path = \"/primary\"",
        "method = \"HEAD\"",
        "host = \"db.example.org\"",
        "status = \"200,204,300-399\"",
        "body = \"primary\"",
        "tls_verify = false",
        "[[service.backend]]",
        "name = \"db-1\"",
        "address = \"198.18.2.1\"",
        "port = 15432",
        "weight = 0",
        "tier = 0",
        "[[service.backend]]",
        "name = \"db-2\"",
        "address = \"198.18.2.2\"",
        "tier = 1",
        "check = { type = \"exec\", command = [\"/bin/check\", \"--standby\"] }",
        "[[service]]",
        "name = \"dns6\"",
        "vip = \"2001:db8::53\"",
        "port = \"all\"",
        "protocol = \"udp\"",
        "mode = \"tunnel\"",
        "[service.check]",
        "type = \"udp\"",
        "port = 53",
        "send = \"ping\"",
        "expect = \"pong\"",
        "[[service.backend]]",
        "name = \"dns-1\"",
        "address = \"198.18.3.1\"",
        "[[service.backend]]",
        "name = \"dns-2\"",
        "address = \"2001:db8:3::2\"",
    ]);
    let config = parse_ok(&text);

    let db_check = CheckConfig {
        kind: CheckKind::Http {
            path: "/primary".into(),
            method: "HEAD".into(),
            host: Some("db.example.org".into()),
            status: "200,204,300-399".parse().unwrap(),
            body: Some("primary".into()),
            tls: true,
            tls_verify: false,
        },
        interval: ms(2_000),
        fast_interval: ms(100),
        timeout: ms(1_000),
        rise: 4,
        fall: 5,
        fall_refused: 2,
        jitter_percent: 20,
        port: Some(8008),
        address: Some(ip("198.18.9.9")),
    };
    let standby_check = CheckConfig {
        kind: CheckKind::Exec {
            command: vec!["/bin/check".into(), "--standby".into()],
        },
        ..db_check.clone()
    };
    let dns_check = CheckConfig {
        kind: CheckKind::Udp {
            send: "ping".into(),
            expect: Some("pong".into()),
        },
        interval: ms(2_000),
        fast_interval: ms(500),
        timeout: ms(500),
        rise: 4,
        fall: 3,
        fall_refused: 1,
        jitter_percent: 10,
        port: Some(53),
        address: None,
    };
    let expected = Config {
        file: PathBuf::from(FILE),
        interfaces: vec!["fo-lb0".into()],
        xdp_mode: XdpMode::Native,
        flow_capacity: 2048,
        pin_dir: "/sys/fs/bpf/test".into(),
        control_socket: "/run/test.sock".into(),
        metrics_listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9200)),
        log_level: LogLevel::Debug,
        xdp_log_level: XdpLogLevel::Warn,
        detach_on_exit: true,
        mtu: 9000,
        tunnel: TunnelConfig {
            source_v4: Some((Ipv4Addr::new(198, 18, 250, 0), 24)),
            source_v6: Some(("2001:db8:ffff::".parse().unwrap(), 112)),
        },
        services: vec![
            ServiceConfig {
                name: "db".into(),
                vip: ip("198.18.0.20"),
                port: PortMatch::Port(5432),
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                table_size: 257,
                no_backend: NoBackendPolicy::FailOpen,
                failback: FailbackPolicy::Manual,
                failback_hold: ms(1_500),
                exactly_one: true,
                min_up: 1,
                spill: false,
                existing_flows_on_failback: ExistingFlowsPolicy::Move,
                drain_timeout: ms(60_000),
                slow_start: ms(250),
                passive_reset: false,
                check: db_check.clone(),
                backends: vec![
                    BackendConfig {
                        name: "db-1".into(),
                        address: ip("198.18.2.1"),
                        port: Some(15432),
                        weight: 0,
                        tier: 0,
                        check: db_check,
                    },
                    BackendConfig {
                        name: "db-2".into(),
                        address: ip("198.18.2.2"),
                        port: None,
                        weight: 100,
                        tier: 1,
                        check: standby_check,
                    },
                ],
            },
            ServiceConfig {
                name: "dns6".into(),
                vip: ip("2001:db8::53"),
                port: PortMatch::All,
                protocol: Protocol::Udp,
                mode: Mode::Tunnel,
                table_size: 65537,
                no_backend: NoBackendPolicy::Drop,
                failback: FailbackPolicy::Auto,
                failback_hold: ms(5_000),
                exactly_one: false,
                min_up: 1,
                spill: false,
                existing_flows_on_failback: ExistingFlowsPolicy::Stay,
                drain_timeout: ms(30_000),
                slow_start: Duration::ZERO,
                passive_reset: false,
                check: dns_check.clone(),
                backends: vec![
                    BackendConfig {
                        name: "dns-1".into(),
                        address: ip("198.18.3.1"),
                        port: None,
                        weight: 100,
                        tier: 0,
                        check: dns_check.clone(),
                    },
                    BackendConfig {
                        name: "dns-2".into(),
                        address: ip("2001:db8:3::2"),
                        port: None,
                        weight: 100,
                        tier: 0,
                        check: dns_check,
                    },
                ],
            },
        ],
    };
    assert_eq!(config, expected);
    assert!(config.service("db").unwrap().backend("db-2").is_some());
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = parse_ok(&service_with(&[]));
    assert_eq!(config.interfaces, ["eth0"]);
    assert_eq!(config.xdp_mode, XdpMode::Auto);
    assert_eq!(config.flow_capacity, 1_048_576);
    assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/failover"));
    assert_eq!(
        config.control_socket,
        Path::new("/run/failover/control.sock")
    );
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.xdp_log_level, XdpLogLevel::Off);
    assert!(!config.detach_on_exit);
    assert_eq!(config.mtu, 1500);
    assert_eq!(config.tunnel, TunnelConfig::default());
    let web = &config.services[0];
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.table_size, 65537);
    assert_eq!(web.no_backend, NoBackendPolicy::Drop);
    assert_eq!(web.failback, FailbackPolicy::Auto);
    assert_eq!(web.failback_hold, ms(5_000));
    assert_eq!(web.drain_timeout, ms(30_000));
    assert_eq!(web.slow_start, Duration::ZERO);
    assert!(!web.passive_reset);
    assert_eq!(
        web.check,
        CheckConfig {
            kind: CheckKind::Tcp {
                send: None,
                expect: None,
                half_open: false,
            },
            interval: ms(1_000),
            fast_interval: ms(250),
            timeout: ms(500),
            rise: 2,
            fall: 3,
            fall_refused: 1,
            jitter_percent: 10,
            port: None,
            address: None,
        }
    );
    assert_eq!(web.backends[0].weight, 100);
    assert_eq!(web.backends[0].tier, 0);
    assert_eq!(web.backends[0].check, web.check);
}

#[test]
fn passive_reset_defaults_on_for_tcp_nat_only() {
    let nat = service_with(&[]).replace("mode = \"dsr\"", "mode = \"nat\"");
    assert!(parse_ok(&nat).services[0].passive_reset);
    let udp_nat = nat.replace("port = 80", "port = 80\nprotocol = \"udp\"");
    assert!(!parse_ok(&udp_nat).services[0].passive_reset);
}

#[test]
fn short_interval_shortens_the_default_timeout_and_fast_interval() {
    let config = parse_ok(&service_with(&["[service.check]", "interval = \"20ms\""]));
    let check = &config.services[0].check;
    assert_eq!(check.timeout, ms(20));
    assert_eq!(check.fast_interval, ms(10));
}

#[test]
fn example_files_parse() {
    let example = include_str!("../../../examples/failover.toml");
    let config = parse_ok(example);
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "db", "dns", "api6"]);

    let web = config.service("web").unwrap();
    assert_eq!(web.backends.len(), 3);
    assert!(web.backends.iter().all(|b| b.tier == 0));
    assert!(matches!(web.check.kind, CheckKind::Http { tls: false, .. }));
    let CheckKind::Http { host, .. } = &web.backend("web-3").unwrap().check.kind else {
        panic!("web-3 has an http check");
    };
    assert_eq!(host.as_deref(), Some("web-3.example.org"));

    let db = config.service("db").unwrap();
    assert!(db.exactly_one);
    assert_eq!(db.failback, FailbackPolicy::Manual);
    assert_eq!(db.check.port, Some(8008));
    assert_eq!(db.backends[1].tier, 1);

    let dns = config.service("dns").unwrap();
    assert_eq!(dns.protocol, Protocol::Udp);
    assert!(
        matches!(&dns.check.kind, CheckKind::Udp { send, .. } if send.starts_with("\u{12}\u{34}"))
    );
    // The backup switched to tcp: the udp-only keys were not inherited.
    assert_eq!(
        dns.backend("dns-backup").unwrap().check.kind,
        CheckKind::Tcp {
            send: None,
            expect: None,
            half_open: false,
        }
    );

    let api6 = config.service("api6").unwrap();
    assert_eq!(api6.mode, Mode::Tunnel);
    assert!(api6.vip.is_ipv6());
    assert!(api6.backend("api6-backup").unwrap().address.is_ipv4());
    assert!(matches!(
        api6.backend("api6-backup").unwrap().check.kind,
        CheckKind::Exec { .. }
    ));

    let demo = parse_ok(include_str!("../../../examples/demo.toml"));
    assert_eq!(demo.interfaces, ["fo-lb0"]);
    let web = &demo.services[0];
    assert_eq!(
        (web.vip, web.port, web.protocol, web.mode),
        (
            ip("198.18.0.10"),
            PortMatch::Port(80),
            Protocol::Tcp,
            Mode::Dsr
        )
    );
    let backends: Vec<(&str, IpAddr)> = web
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.address))
        .collect();
    assert_eq!(
        backends,
        [
            ("web-1", ip("198.18.0.101")),
            ("web-2", ip("198.18.0.102")),
            ("web-3", ip("198.18.0.103")),
        ]
    );
    assert_eq!(web.check.kind.check_type(), CheckType::Tcp);
    assert_eq!((web.check.interval, web.check.timeout), (ms(100), ms(50)));
    assert_eq!((web.check.rise, web.check.fall), (2, 2));
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("failover-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "interface = \"eth0\"\nmtu = 1\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:2: mtu: expected 0 (no check) or an MTU in 576..=65535, found 1",
            path.display()
        )
    );
    std::fs::write(&path, "interface = \"eth0\"\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().file, path);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = Config::load(dir.join("missing.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(missing.errors().is_empty());
}

#[test]
fn unknown_keys_are_errors_with_line_and_path() {
    let top = lines(&["interface = \"eth0\"", "interfase = \"eth1\""]);
    assert_only_error(&top, 2, "interfase", "unknown field `interfase`");

    let in_check = service_with(&["[service.check]", "type = \"http\"", "pth = \"/\""]);
    assert_only_error(&in_check, 9, "service[0].check.pth", "expected one of");

    let in_backend = lines(&[
        "interface = \"eth0\"",
        "[[service]]",
        "name = \"web\"",
        "vip = \"198.18.0.10\"",
        "port = 80",
        "mode = \"dsr\"",
        "[[service.backend]]",
        "name = \"web-1\"",
        "address = \"198.18.1.1\"",
        "[[service.backend]]",
        "name = \"web-2\"",
        "address = \"198.18.1.2\"",
        "check = { timeout = \"1s\", intervall = \"2s\" }",
    ]);
    assert_only_error(
        &in_backend,
        13,
        "service[0].backend[1].check.intervall",
        "unknown field `intervall`",
    );
}

#[test]
fn toml_syntax_and_type_errors_are_located() {
    let syntax = lines(&["interface = \"eth0\"", "mtu = ", "log_level = \"info\""]);
    let all = errors(&syntax);
    assert_eq!(all.len(), 1);
    assert!(all[0].starts_with("test.toml:2: mtu: "), "{}", all[0]);

    let wrong_type = service_with(&["min_up = \"two\""]);
    assert_only_error(&wrong_type, 7, "service[0].min_up", "expected i64");

    let wrong_port_type = service_with(&[]).replace("port = 80", "port = 8.5");
    assert_only_error(&wrong_port_type, 5, "service[0].port", "a port number");

    let bare_duration = service_with(&["drain_timeout = 30"]);
    assert_only_error(
        &bare_duration,
        7,
        "service[0].drain_timeout",
        "invalid type: integer `30`, expected a duration string such as \"500ms\"",
    );

    let date = lines(&["interface = \"eth0\"", "pin_dir = 1979-05-27"]);
    assert_only_error(
        &date,
        2,
        "pin_dir",
        "invalid type: date-time, expected a string",
    );
}

#[test]
fn duplicate_service_names() {
    let mut text = service_with(&[]);
    text.push_str(&lines(&[
        "[[service]]",              // 10
        "name = \"web\"",           // 11
        "vip = \"198.18.0.11\"",    // 12
        "port = 80",                // 13
        "mode = \"dsr\"",           // 14
        "[[service.backend]]",      // 15
        "name = \"web-1\"",         // 16
        "address = \"198.18.1.1\"", // 17
    ]));
    assert_only_error(
        &text,
        11,
        "service[1].name",
        "duplicate service name \"web\" (first defined at line 3)",
    );
}

#[test]
fn duplicate_backend_names_and_addresses() {
    let mut text = service_with(&[]);
    text.push_str(&lines(&[
        "[[service.backend]]",      // 10
        "name = \"web-1\"",         // 11
        "address = \"198.18.1.1\"", // 12
    ]));
    let all = assert_error(
        &text,
        11,
        "service[0].backend[1].name",
        "duplicate backend name \"web-1\" (first defined at line 8)",
    );
    assert_error(
        &text,
        12,
        "service[0].backend[1].address",
        "already used by backend \"web-1\" (line 9)",
    );
    assert_eq!(all.len(), 2);
}

/// A second service on `vip`, `port` and `protocol`, starting at line 10.
fn second_service(first_port: &str, port: &str, protocol: &str) -> String {
    let mut text = service_with(&[]).replace("port = 80", &format!("port = {first_port}"));
    text.push_str(&lines(&[
        "[[service]]",                         // 10
        "name = \"other\"",                    // 11
        "vip = \"198.18.0.10\"",               // 12
        &format!("port = {port}"),             // 13
        &format!("protocol = \"{protocol}\""), // 14
        "mode = \"dsr\"",                      // 15
        "[[service.backend]]",                 // 16
        "name = \"other-1\"",                  // 17
        "address = \"198.18.1.1\"",            // 18
    ]));
    text
}

#[test]
fn vip_port_and_protocol_are_unique() {
    assert_only_error(
        &second_service("80", "80", "tcp"),
        13,
        "service[1].port",
        "198.18.0.10 port 80/tcp overlaps service \"web\" (line 2",
    );
    assert_error(
        &second_service("80", "\"all\"", "tcp"),
        13,
        "service[1].port",
        "port all/tcp overlaps service \"web\"",
    );
    assert_error(
        &second_service("\"all\"", "443", "tcp"),
        13,
        "service[1].port",
        "port 443/tcp overlaps service \"web\" (line 2, port all/tcp)",
    );
    // Another protocol or another port is another service.
    parse_ok(&second_service("80", "80", "udp"));
    parse_ok(&second_service("80", "443", "tcp"));
}

#[test]
fn timeout_longer_than_interval() {
    let text = service_with(&["[service.check]", "interval = \"1s\"", "timeout = \"2s\""]);
    assert_only_error(
        &text,
        9,
        "service[0].check.timeout",
        "timeout 2s is longer than interval 1s (service[0].check.interval at line 8)",
    );

    // A bad interval is reported alone, not compared with the timeout.
    let bad_interval =
        service_with(&["[service.check]", "interval = \"soon\"", "timeout = \"2s\""]);
    assert_only_error(
        &bad_interval,
        8,
        "service[0].check.interval",
        "expected a number followed by a unit",
    );

    // The interval may come from another table: the message says where.
    let layered = after_interface(
        &service_with(&["[service.check]", "timeout = \"500ms\""]),
        &["[defaults.check]", "interval = \"300ms\""],
    );
    assert_only_error(
        &layered,
        10,
        "service[0].check.timeout",
        "(defaults.check.interval at line 3)",
    );
}

#[test]
fn zero_rise_fall_and_fall_refused() {
    let text = service_with(&[
        "[service.check]",
        "rise = 0",
        "fall = 0",
        "fall_refused = 0",
    ]);
    let all = assert_error(&text, 8, "service[0].check.rise", "expected at least 1");
    assert_error(&text, 9, "service[0].check.fall", "expected at least 1");
    assert_error(&text, 10, "service[0].check.fall_refused", "found 0");
    assert_eq!(all.len(), 3);
}

#[test]
fn table_size_must_be_a_prime_in_range() {
    assert_only_error(
        &service_with(&["table_size = 65536"]),
        7,
        "service[0].table_size",
        "65536 is not prime (Maglev needs a prime table size); nearest primes are 65521 and 65537",
    );
    assert_only_error(
        &service_with(&["table_size = 256"]),
        7,
        "service[0].table_size",
        "expected a prime in 257..=16777213",
    );
    assert_only_error(
        &service_with(&["table_size = 16777214"]),
        7,
        "service[0].table_size",
        "found 16777214",
    );
    // Nearest primes outside the range are not suggested.
    assert_only_error(
        &service_with(&["table_size = 258"]),
        7,
        "service[0].table_size",
        "nearest primes are 257 and 263",
    );
    for prime in [257, 65537, 16_777_213] {
        let config = parse_ok(&service_with(&[&format!("table_size = {prime}")]));
        assert_eq!(config.services[0].table_size, prime);
    }
}

#[test]
fn service_without_backend() {
    let text = lines(&[
        "interface = \"eth0\"",
        "[[service]]",
        "name = \"web\"",
        "vip = \"198.18.0.10\"",
        "port = 80",
        "mode = \"dsr\"",
    ]);
    assert_only_error(&text, 2, "service[0]", "service \"web\" has no backend");
}

#[test]
fn address_families_must_match_in_dsr_and_nat() {
    for mode in ["dsr", "nat"] {
        let text = service_with(&[])
            .replace("mode = \"dsr\"", &format!("mode = \"{mode}\""))
            .replace("address = \"198.18.1.1\"", "address = \"2001:db8:1::1\"");
        assert_only_error(
            &text,
            9,
            "service[0].backend[0].address",
            &format!(
                "2001:db8:1::1 is IPv6 but the VIP 198.18.0.10 is IPv4: {mode} mode cannot change"
            ),
        );
    }
    let v6_vip = service_with(&[]).replace("vip = \"198.18.0.10\"", "vip = \"2001:db8::10\"");
    assert_only_error(
        &v6_vip,
        9,
        "service[0].backend[0].address",
        "198.18.1.1 is IPv4 but the VIP 2001:db8::10 is IPv6",
    );
}

#[test]
fn tunnel_mode_needs_a_source_of_the_backend_family() {
    let tunnel = service_with(&[])
        .replace("mode = \"dsr\"", "mode = \"tunnel\"")
        .replace("vip = \"198.18.0.10\"", "vip = \"2001:db8::10\"");
    assert_only_error(
        &tunnel,
        6,
        "service[0].mode",
        "tunnel mode to IPv4 backend \"web-1\" needs an IPv4 outer source: add source_v4 to [tunnel]",
    );
    // IPv6 VIP over an IPv4 backend is fine with an IPv4 source.
    parse_ok(&after_interface(
        &tunnel,
        &["[tunnel]", "source_v4 = \"198.18.250.0/24\""],
    ));
    // An IPv6 source does not help an IPv4 backend.
    let with_v6 = after_interface(
        &tunnel,
        &["[tunnel]", "source_v6 = \"2001:db8:ffff::/112\""],
    );
    assert_only_error(&with_v6, 8, "service[0].mode", "add source_v4 to [tunnel]");
}

#[test]
fn tunnel_sources_are_checked() {
    let text = lines(&[
        "interface = \"eth0\"",
        "[tunnel]",
        "source_v4 = \"198.18.250.7/24\"",
        "source_v6 = \"2001:db8::/64\"",
    ]);
    let all = assert_error(
        &text,
        3,
        "tunnel.source_v4",
        "198.18.250.7/24 has host bits set: write 198.18.250.0/24",
    );
    assert_error(
        &text,
        4,
        "tunnel.source_v6",
        "expected an IPv6 network with a prefix length in 96..=128",
    );
    assert_eq!(all.len(), 2);
}

#[test]
fn exactly_one_with_spill() {
    assert_only_error(
        &service_with(&["exactly_one = true", "spill = true"]),
        8,
        "service[0].spill",
        "cannot be combined with exactly_one = true",
    );
}

#[test]
fn check_keys_of_another_type() {
    let text = service_with(&["[service.check]", "path = \"/healthz\""]);
    assert_only_error(
        &text,
        8,
        "service[0].check.path",
        "`path` only applies to http and https checks, but this check is tcp (the default type)",
    );
    let explicit = service_with(&[
        "[service.check]",
        "type = \"http\"",
        "send = \"x\"",
        "tls_verify = true",
    ]);
    let all = assert_error(
        &explicit,
        9,
        "service[0].check.send",
        "only applies to tcp and udp checks, but this check is http (set by service[0].check.type at line 8)",
    );
    assert_error(
        &explicit,
        10,
        "service[0].check.tls_verify",
        "only applies to https checks",
    );
    assert_eq!(all.len(), 2);
}

#[test]
fn a_type_change_drops_inherited_type_specific_keys() {
    let defaults = ["[defaults.check]", "type = \"http\"", "path = \"/healthz\""];
    let text = after_interface(
        &service_with(&["[service.check]", "type = \"tcp\""]),
        &defaults,
    );
    let config = parse_ok(&text);
    assert_eq!(
        config.services[0].check.kind,
        CheckKind::Tcp {
            send: None,
            expect: None,
            half_open: false,
        }
    );
    // Without a type change they are inherited.
    let same = after_interface(
        &service_with(&["[service.check]", "status = \"200\""]),
        &defaults,
    );
    let config = parse_ok(&same);
    let CheckKind::Http { path, status, .. } = &config.services[0].check.kind else {
        panic!("expected an http check");
    };
    assert_eq!(
        (path.as_str(), status.to_string().as_str()),
        ("/healthz", "200")
    );
}

#[test]
fn udp_check_needs_send_and_exec_needs_command() {
    let udp = service_with(&["[service.check]", "type = \"udp\""]);
    assert_only_error(&udp, 8, "service[0].check.send", "a udp check needs `send`");
    let exec = service_with(&["[service.check]", "type = \"exec\""]);
    assert_only_error(
        &exec,
        8,
        "service[0].check.command",
        "an exec check needs `command`",
    );
    let empty = service_with(&["[service.check]", "type = \"exec\"", "command = []"]);
    assert_only_error(
        &empty,
        9,
        "service[0].check.command",
        "found an empty program",
    );
}

#[test]
fn bad_addresses_durations_and_percentages() {
    let text = lines(&[
        "interface = \"eth0\"",           // 1
        "metrics_listen = \"localhost\"", // 2
        "[defaults.check]",               // 3
        "interval = \"5\"",               // 4
        "jitter = \"10\"",                // 5
        "fast_interval = \"1 minute\"",   // 6
        "[[service]]",                    // 7
        "name = \"web\"",                 // 8
        "vip = \"198.18.0.300\"",         // 9
        "port = 80",                      // 10
        "mode = \"dsr\"",                 // 11
        "drain_timeout = \"soon\"",       // 12
        "[service.check]",                // 13
        "jitter = \"60%\"",               // 14
        "address = \"nowhere\"",          // 15
        "[[service.backend]]",            // 16
        "name = \"web-1\"",               // 17
        "address = \"0.0.0.0\"",          // 18
    ]);
    assert_error(
        &text,
        2,
        "metrics_listen",
        "expected an address and port such as \"127.0.0.1:9100\"",
    );
    assert_error(
        &text,
        4,
        "defaults.check.interval",
        "\"5\" has no unit: write for example \"5s\"",
    );
    assert_error(
        &text,
        5,
        "defaults.check.jitter",
        "expected a whole percentage such as \"10%\", found \"10\"",
    );
    assert_error(
        &text,
        6,
        "defaults.check.fast_interval",
        "unknown unit \" minute\"",
    );
    assert_error(
        &text,
        9,
        "service[0].vip",
        "expected an IPv4 or IPv6 address",
    );
    assert_error(
        &text,
        12,
        "service[0].drain_timeout",
        "expected a number followed by a unit",
    );
    assert_error(
        &text,
        14,
        "service[0].check.jitter",
        "expected 0% to 50% of the interval, found 60%",
    );
    assert_error(&text, 15, "service[0].check.address", "found \"nowhere\"");
    let all = assert_error(
        &text,
        18,
        "service[0].backend[0].address",
        "expected a unicast address, found 0.0.0.0",
    );
    assert_eq!(all.len(), 9, "{}", all.join("\n"));
}

#[test]
fn names_and_interface_syntax() {
    let names = service_with(&[])
        .replace("name = \"web\"", "name = \"Web Site\"")
        .replace(
            "name = \"web-1\"",
            "name = \"a-very-long-backend-name-of-33-chars\"",
        );
    let all = assert_error(
        &names,
        3,
        "service[0].name",
        "expected 1 to 32 characters from a-z, 0-9, '_' and '-', found \"Web Site\"",
    );
    assert_error(
        &names,
        8,
        "service[0].backend[0].name",
        "found \"a-very-long",
    );
    assert_eq!(all.len(), 2);

    assert_only_error(
        "interface = \"\"\n",
        1,
        "interface",
        "expected an interface name of 1 to 15 bytes",
    );
    assert_only_error(
        "interface = \"a-sixteen-chars-\"\n",
        1,
        "interface",
        "found \"a-sixteen-chars-\"",
    );
    assert_only_error(
        "mtu = 1500\n",
        1,
        "interface",
        "missing key: expected the interface",
    );
}

#[test]
fn missing_service_and_backend_keys() {
    let text = lines(&[
        "interface = \"eth0\"",
        "[[service]]",
        "name = \"web\"",
        "[[service.backend]]",
        "name = \"web-1\"",
    ]);
    let all = assert_error(&text, 2, "service[0].vip", "missing key");
    assert_error(&text, 2, "service[0].port", "missing key");
    assert_error(
        &text,
        2,
        "service[0].mode",
        "missing key: expected the forwarding mode",
    );
    assert_error(&text, 4, "service[0].backend[0].address", "missing key");
    assert_eq!(all.len(), 4);
}

#[test]
fn bad_choices_list_the_accepted_values() {
    let text = service_with(&["protocol = \"sctp\"", "no_backend = \"reject\""]).replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nxdp_mode = \"fast\"",
    );
    let all = assert_error(
        &text,
        2,
        "xdp_mode",
        "expected one of \"native\", \"generic\" or \"auto\", found \"fast\"",
    );
    assert_error(
        &text,
        8,
        "service[0].protocol",
        "expected one of \"tcp\" or \"udp\"",
    );
    assert_error(
        &text,
        9,
        "service[0].no_backend",
        "\"fail_open\", found \"reject\"",
    );
    assert_eq!(all.len(), 3);
}

#[test]
fn backend_port_only_in_nat_mode_and_not_with_all_ports() {
    let mut dsr = service_with(&[]);
    dsr.push_str("port = 8080\n");
    assert_only_error(
        &dsr,
        10,
        "service[0].backend[0].port",
        "only allowed in nat mode",
    );

    let mut all_ports = service_with(&[])
        .replace("mode = \"dsr\"", "mode = \"nat\"")
        .replace("port = 80", "port = \"all\"");
    all_ports.push_str("port = 8080\n");
    assert_error(
        &all_ports,
        10,
        "service[0].backend[0].port",
        "not allowed when the service port is \"all\"",
    );
}

#[test]
fn all_ports_needs_a_check_port() {
    let text = service_with(&[]).replace("port = 80", "port = \"all\"");
    assert_only_error(
        &text,
        5,
        "service[0].port",
        "port = \"all\" leaves the tcp check of backend \"web-1\" without a port to probe",
    );
    parse_ok(
        &service_with(&["[service.check]", "port = 22"]).replace("port = 80", "port = \"all\""),
    );
}

#[test]
fn passive_reset_needs_tcp_nat() {
    assert_only_error(
        &service_with(&["passive_reset = true"]),
        7,
        "service[0].passive_reset",
        "needs mode = \"nat\" and protocol = \"tcp\"",
    );
}

#[test]
fn min_up_must_be_reachable() {
    assert_only_error(
        &service_with(&["min_up = 2"]),
        7,
        "service[0].min_up",
        "min_up = 2 but the largest tier has 1 backend(s)",
    );
    assert_only_error(
        &service_with(&["min_up = 0"]),
        7,
        "service[0].min_up",
        "expected at least 1",
    );
}

#[test]
fn shared_default_errors_are_reported_once() {
    let mut text = service_with(&[]);
    text.push_str(&lines(&[
        "[[service]]",
        "name = \"api\"",
        "vip = \"198.18.0.11\"",
        "port = 80",
        "mode = \"dsr\"",
        "[[service.backend]]",
        "name = \"api-1\"",
        "address = \"198.18.1.1\"",
        "check = { port = 81 }",
    ]));
    let text = after_interface(&text, &["[defaults.check]", "rise = 0"]);
    assert_only_error(&text, 3, "defaults.check.rise", "expected at least 1");
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = lines(&[
        "interface = \"eth0\"",     // 1
        "flow_capacity = 10",       // 2
        "[[service]]",              // 3
        "name = \"web\"",           // 4
        "vip = \"198.18.0.10\"",    // 5
        "port = 0",                 // 6
        "mode = \"dsr\"",           // 7
        "table_size = 1000",        // 8
        "[service.check]",          // 9
        "timeout = \"2s\"",         // 10
        "[[service.backend]]",      // 11
        "name = \"web-1\"",         // 12
        "address = \"198.18.1.1\"", // 13
        "weight = 70000",           // 14
        "tier = -1",                // 15
    ]);
    let all = errors(&text);
    let expected = [
        "test.toml:2: flow_capacity: expected a number of flows of at least 1024, found 10",
        "test.toml:6: service[0].port: expected a port in 1..=65535, found 0",
        "test.toml:8: service[0].table_size: 1000 is not prime (Maglev needs a prime table size); nearest primes are 997 and 1009",
        "test.toml:10: service[0].check.timeout: timeout 2s is longer than interval 1s (the default): a check must end before the next one starts",
        "test.toml:14: service[0].backend[0].weight: expected a weight in 0..=65535 (0 takes no new flows), found 70000",
        "test.toml:15: service[0].backend[0].tier: expected a tier of 0 (primary) or more (backups), found -1",
    ];
    assert_eq!(all, expected);
}

#[test]
fn status_sets() {
    let set: StatusSet = "200,204,300-399".parse().unwrap();
    assert!(set.contains(204) && set.contains(301) && !set.contains(201));
    assert_eq!(set.to_string(), "200,204,300-399");
    assert_eq!(StatusSet::default().to_string(), "200-399");
    for bad in ["", "20", "200-", "399-300", "200,,204", "ok"] {
        assert!(bad.parse::<StatusSet>().is_err(), "{bad:?}");
    }
    let text = service_with(&["[service.check]", "type = \"http\"", "status = \"2xx\""]);
    assert_only_error(
        &text,
        9,
        "service[0].check.status",
        "\"2xx\" is not a number",
    );
}

#[test]
fn interface_takes_a_name_or_a_list() {
    let service = "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [[service.backend]]\n  name = \"a\"\n  address = \"198.18.0.101\"\n";
    let two = parse_ok(&format!("interface = [\"eth0\", \"eth1\"]\n{service}"));
    assert_eq!(two.interfaces, ["eth0", "eth1"]);
    let errs = errors(&format!("interface = [\"eth0\", \"eth0\"]\n{service}"));
    assert_eq!(
        errs,
        [format!(
            "{FILE}:1: interface: interface \"eth0\" is listed twice"
        )]
    );
    let errs = errors(&format!("interface = []\n{service}"));
    assert!(
        errs[0].starts_with(&format!("{FILE}:1: interface: expected at least one")),
        "{errs:?}"
    );
    let errs = errors(&format!("interface = [\"eth0\", \"a b\"]\n{service}"));
    assert!(errs[0].contains("without '/', ':' or spaces"), "{errs:?}");
    let errs = errors(&format!("interface = 5\n{service}"));
    assert!(
        errs[0].starts_with(&format!("{FILE}:1: interface: "))
            && errs[0].contains("a list of them"),
        "{errs:?}"
    );
}

#[test]
fn half_open_tcp_checks() {
    let text = service_with(&["[service.check]", "half_open = true"]);
    let config = parse_ok(&text);
    assert_eq!(
        config.services[0].backends[0].check.kind,
        CheckKind::Tcp {
            send: None,
            expect: None,
            half_open: true,
        }
    );
    // A half-open check sends a SYN only: nothing to send or expect.
    let with_send = service_with(&["[service.check]", "half_open = true", "send = \"PING\""]);
    assert_only_error(
        &with_send,
        9,
        "service[0].check.send",
        "`send` needs a connection, but this check is half-open (half_open = true at line 8",
    );
    // Only tcp checks can be half-open.
    let http = service_with(&["[service.check]", "type = \"http\"", "half_open = true"]);
    assert_only_error(
        &http,
        9,
        "service[0].check.half_open",
        "`half_open` only applies to tcp checks, but this check is http",
    );
}
