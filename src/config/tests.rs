use std::path::Path;

use super::*;

/// The config file `text`, which must be valid.
fn file(text: &str) -> Settings {
    Settings::parse(text, Path::new("f")).unwrap()
}

/// Why the config file `text` is refused.
fn file_error(text: &str) -> ConfigError {
    Settings::parse(text, Path::new("f")).unwrap_err()
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let e =
        Settings::parse("listen = []\nttl-seconds = 5\n", Path::new("/etc/x.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ttl-seconds") && msg.contains("/etc/x.toml"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn flags_override_file_override_defaults() {
    let layer =
        file("listen = [\"tcp:127.0.0.1:2222\"]\nrpcbind-port = 1111\nupstream-timeout = 0.5\n");
    let c = Config::resolve(layer, flags(&["--rpcbind-port", "112"])).unwrap();
    assert_eq!(c.listen, vec!["tcp:127.0.0.1:2222".parse().unwrap()]);
    assert_eq!(c.rpcbind_port, 112);
    assert_eq!(c.upstream_timeout, Duration::from_millis(500));
    assert_eq!(c.rpcbind_socket, PathBuf::from(DEFAULT_RPCBIND_SOCKET));
    let d = Config::resolve(Settings::default(), Settings::default()).unwrap();
    assert_eq!(d.listen.len(), 5);
    assert_eq!((d.intercept, d.intercept_mark), (false, 0x5250));
}

#[test]
fn intercept_marks_parse_in_decimal_and_hex() {
    let c = file("intercept = true\nintercept-mark = \"0x10\"\n");
    assert_eq!(
        (c.intercept, c.intercept_mark),
        (Some(true), Some(Mark(16)))
    );
    let c = file("intercept-mark = 21072\n");
    assert_eq!(c.intercept_mark, Some(Mark(0x5250)));
    assert_eq!("0x5250".parse::<Mark>(), Ok(Mark(0x5250)));
    for bad in ["0", "0x", "-1", "4294967296", "mark"] {
        let e = bad.parse::<Mark>().unwrap_err();
        assert!(e.contains(bad) && e.contains("0x5250"), "{e}");
    }
    let e = file_error("intercept-mark = 0\n");
    assert!(e.to_string().contains("intercept-mark"), "{e}");
}

/// The settings of `serve ARGS`, as the command line gives them.
fn flags(args: &[&str]) -> Settings {
    use clap::Parser;
    let argv = ["rpcbind-proxy", "serve"].iter().chain(args);
    match crate::cli::Cli::try_parse_from(argv).unwrap().command {
        crate::cli::Command::Serve(serve) => serve.as_layer().unwrap(),
        _ => unreachable!(),
    }
}

fn resolve_flags(args: &[&str]) -> Result<Config, ConfigError> {
    Config::resolve(Settings::default(), flags(args)).map_err(ConfigError::as_flag)
}

#[test]
fn log_levels_that_would_log_nothing_are_refused() {
    for good in [
        "info",
        "DEBUG",
        "off",
        "rpcbind_proxy=debug,info",
        "warn,rpcbind_proxy::proxy=trace",
    ] {
        check_log_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in ["bogus", "", "info,bogus", "rpcbind_proxy=loud", "verbose"] {
        let e = resolve_flags(&["--log-level", bad])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{bad:?}"))
                && e.contains("--log-level")
                && e.contains("error, warn, info, debug, trace"),
            "{e}"
        );
    }
}

#[test]
fn nonsense_values_are_refused_with_the_valid_range() {
    for (flag, value, range) in [
        ("--max-connections", "0", "1 or more"),
        ("--max-entries", "0", "ttl and negative-ttl to 0"),
        ("--max-entries", "16777217", "from 1 to 16777216"),
        ("--ttl", "-1", "0 turns caching"),
        ("--rpcbind-port", "0", "1 to 65535"),
        ("--threads", "100000", "to 1024"),
        ("--max-in-flight", "0", "1 or more"),
        ("--max-udp-reply", "511", "from 512 to 65507"),
    ] {
        let e = resolve_flags(&[flag, value]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{flag}: {value} ")) && e.contains(range),
            "{e}"
        );
    }
    // 0 stays the documented "not cached" for the TTLs.
    let c = resolve_flags(&["--ttl", "0", "--negative-ttl", "0"]).unwrap();
    assert_eq!(
        (c.cache.ttl, c.cache.negative_ttl),
        (Duration::ZERO, Duration::ZERO)
    );
}

#[test]
fn switches_are_unset_unless_given_so_the_file_decides() {
    let none = flags(&[]);
    assert_eq!(
        (none.intercept, none.attribution, none.listen.is_none()),
        (None, None, true)
    );
    let both = flags(&[
        "--intercept",
        "--no-attribution",
        "--listen",
        "tcp:127.0.0.1:5",
    ]);
    assert_eq!(
        (both.intercept, both.attribution),
        (Some(true), Some(false))
    );
    let layer = file("intercept = false\nattribution = true\n");
    let c = Config::resolve(layer.clone(), both).unwrap();
    assert_eq!(
        (c.intercept, c.attribution, c.listen.len()),
        (true, false, 1)
    );
    let c = Config::resolve(layer, none).unwrap();
    assert_eq!(
        (c.intercept, c.attribution, c.listen.len()),
        (false, true, 5)
    );
}

#[test]
fn a_reload_names_what_needs_a_restart() {
    let old = Config::resolve(Settings::default(), Settings::default()).unwrap();
    assert_eq!(old.diff(&old), vec![]);
    assert_eq!(old.restart_needed(&old), None);
    let live = resolve_flags(&["--ttl", "5", "--no-attribution"]).unwrap();
    assert_eq!(
        old.diff(&live),
        vec![
            Change {
                key: "attribution".into(),
                takes: Takes::Reload
            },
            Change {
                key: "ttl".into(),
                takes: Takes::Reload
            },
        ]
    );
    assert_eq!(old.restart_needed(&live), None);
    let threads = resolve_flags(&["--threads", "2", "--ttl", "5"]).unwrap();
    assert_eq!(
        old.restart_needed(&threads).as_deref(),
        Some("threads changes only with a restart; kept the running value")
    );
    let both = resolve_flags(&["--listen", "tcp:127.0.0.1:5", "--threads", "2"]).unwrap();
    assert_eq!(
        old.restart_needed(&both).as_deref(),
        Some("listen, threads change only with a restart; kept the running values")
    );
}

#[test]
fn file_errors_name_the_file_line_key_and_form_in_one_line() {
    let f = Path::new("/etc/x.toml");
    let cases = [
        (
            "ttl = 5\nupstream-timeout = \"30s\"\n",
            "line 2, column 20",
            "upstream-timeout: invalid type: string \"30s\", expected a positive number of seconds",
        ),
        (
            "listen = []\n",
            "line 1, column 1",
            "listen = []: expected a non-empty list",
        ),
        (
            "ttl = 1\n\nmax-entries = 0\n",
            "line 3, column 1",
            "max-entries = 0: expected a whole number from 1",
        ),
        (
            "[x\nttl = 1\n",
            "line 1, column 3",
            "invalid table header; expected",
        ),
        (
            "listen = [\n  \"tcp:127.0.0.1:1\",\n  \"tcp:nowhere\",\n]\n",
            "line 1, column 10",
            "listen: bad listen spec \"tcp:nowhere\"",
        ),
        (
            "rpcbind-port = 70000\n",
            "line 1, column 16",
            "rpcbind-port: invalid value: integer `70000`, expected a port number from 1 to 65535",
        ),
        (
            "log-level = \"bogus\"\n",
            "line 1",
            "log-level = \"bogus\": expected a level",
        ),
    ];
    for (text, at, what) in cases {
        let e = Settings::parse(text, f).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.starts_with("bad config file /etc/x.toml ") && e.contains(at) && e.contains(what),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn the_settings_summary_reads_like_the_config_file() {
    let c = Config::resolve(Settings::default(), Settings::default()).unwrap();
    assert_eq!(
        c.summary(),
        "ttl 1m, negative-ttl 10s, serve-stale 30s, max-entries 65536, refresh 1s, upstream-timeout 2s, max-connections 4096, max-in-flight 64, idle-timeout 2m, record-timeout 10s, max-udp-reply 9000 bytes, remote-udp-amplification 1, remote-rate 500/s, remote-in-flight 64, log-level info"
    );
}

#[test]
fn bad_values_are_named() {
    let e = file_error("listen = [\"tcp:nowhere\"]");
    assert!(e.to_string().contains("tcp:nowhere"), "{e}");
    let e = resolve_flags(&["--upstream-timeout", "-1"]).unwrap_err();
    assert!(e.to_string().contains("upstream-timeout"), "{e}");
    let e = resolve_flags(&["--refresh", "0"]).unwrap_err();
    assert!(e.to_string().contains("refresh"), "{e}");
    let c = resolve_flags(&["--serve-stale", "0", "--ttl", "300"]).unwrap();
    assert_eq!(c.cache.serve_stale, Duration::ZERO);
    assert_eq!(c.cache.ttl, Duration::from_secs(300));
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(10));
}

#[test]
fn a_metrics_address_is_read_by_the_listener_parser() {
    assert_eq!(
        "tcp:127.0.0.1:9111".parse::<MetricsAddr>(),
        Ok(MetricsAddr(([127, 0, 0, 1], 9111).into()))
    );
    for (bad, why) in [
        ("udp:127.0.0.1:9111", "HTTP is served over TCP only"),
        ("tcp:127.0.0.1:99999", "port 99999 out of range"),
        ("tcp:127.0.0.1:0", "port 0"),
        ("tcp:localhost:9111", "not an IP address"),
        ("9111", "no transport prefix"),
    ] {
        let e = bad.parse::<MetricsAddr>().unwrap_err();
        assert!(
            e.contains(bad) && e.contains(why) && e.contains("tcp:IP:PORT"),
            "{e}"
        );
    }
}

#[test]
fn server_mode_needs_an_interface_and_takes_only_valid_names() {
    let c = Config::resolve(
        file("intercept-remote = true\nremote-interface = [\"eth0\", \"bond0.12\"]\n"),
        Settings::default(),
    )
    .unwrap();
    assert!(c.intercept_remote);
    assert_eq!(c.remote_interface, ["eth0", "bond0.12"]);
    let c = Config::resolve(
        Settings::default(),
        flags(&[
            "--intercept-remote",
            "--remote-interface",
            "eth1",
            "--remote-interface",
            "eth2",
        ]),
    )
    .unwrap();
    assert_eq!(c.remote_interface, ["eth1", "eth2"]);
    let e = file_error("intercept-remote = true\n");
    assert!(e.to_string().contains("remote-interface"), "{e}");
    let e = Config::resolve(Settings::default(), flags(&["--intercept-remote"])).unwrap_err();
    assert!(e.to_string().contains("remote-interface"), "{e}");
    for bad in ["", "a/b", "eth 0", "x:1", "sixteen-letters!"] {
        let e = file_error(&format!("remote-interface = [{bad:?}]\n"));
        assert!(e.to_string().contains("remote-interface"), "{bad:?}: {e}");
        assert!(interface_arg(bad).unwrap_err().contains("eth0"));
    }
}
