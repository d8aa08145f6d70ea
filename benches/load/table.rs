//! The table: one row per transport, mode, target and client count.

use crate::clients::{Mode, Spec, Target, Transport};

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) spec: Spec,
    pub(crate) lookups: u64,
    pub(crate) errors: u64,
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) time_wait: usize,
    pub(crate) rpcbind_served: u64,
    pub(crate) proxy_hwm_kib: Option<u64>,
}

pub(crate) fn find(
    rows: &[Row],
    t: Transport,
    mode: Mode,
    target: Target,
    clients: usize,
) -> Option<&Row> {
    rows.iter().find(|r| {
        r.spec.transport == t
            && r.spec.mode == mode
            && r.spec.target == target
            && r.spec.clients == clients
    })
}

pub(crate) fn print_table(rows: &[Row]) {
    let header = [
        "transport",
        "mode",
        "target",
        "clients",
        "lookups/s",
        "p50 µs",
        "p99 µs",
        "errors",
        "TIME_WAIT",
        "rpcbind served",
        "proxy VmHWM",
        "proxy/floor",
        "proxy/rpcbind",
    ];
    let mut table: Vec<Vec<String>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let s = &r.spec;
        let ratio = |other: Target| {
            if !matches!(s.target, Target::Proxy | Target::Miss) {
                return String::new();
            }
            // The row measured right after it when that is its pair (the
            // floor, in its own process, follows the proxy in each group of
            // rows), else the first of its kind.
            rows.get(i + 1)
                .filter(|o| {
                    o.spec.target == other
                        && (o.spec.transport, o.spec.mode, o.spec.clients)
                            == (s.transport, s.mode, s.clients)
                })
                .or_else(|| find(rows, s.transport, s.mode, other, s.clients))
                .map_or(String::new(), |o| format!("{:.2}", r.rate / o.rate))
        };
        table.push(vec![
            s.transport.name().into(),
            s.mode_name().into(),
            s.target.name().into(),
            s.clients.to_string(),
            format!("{:.0}", r.rate),
            format!("{:.1}", r.p50),
            format!("{:.1}", r.p99),
            r.errors.to_string(),
            r.time_wait.to_string(),
            r.rpcbind_served.to_string(),
            r.proxy_hwm_kib
                .map_or(String::new(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ratio(Target::Floor),
            ratio(Target::Rpcbind),
        ]);
    }
    print_markdown(&header, table);
}

/// A markdown table with aligned columns: the first three left-aligned
/// (names), the rest right-aligned (figures).
pub(crate) fn print_markdown(header: &[&str], table: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|row: &Vec<String>| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i < 3 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|h| h.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| if i < 3 {
                format!(":{}-", "-".repeat(*w))
            } else {
                format!("-{}:", "-".repeat(*w))
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in table {
        line(row);
    }
}
