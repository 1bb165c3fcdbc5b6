//! Prometheus metrics of the appliance, rendered as text at `/metrics`: hosts by state, BMC call counts and
//! latencies, per-phase durations, agent requests. Labels carry states, operations and outcomes, never host names.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BUCKETS_SECS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

const HELP: &[(&str, &str, &str)] = &[
    ("kiln_bmc_calls_total", "counter", "BMC calls by operation and outcome."),
    (
        "kiln_bmc_call_duration_seconds",
        "histogram",
        "BMC call latency by operation.",
    ),
    (
        "kiln_phase_duration_seconds",
        "histogram",
        "Duration of host states and sub-phases.",
    ),
    (
        "kiln_state_transitions_total",
        "counter",
        "Host state changes by target state.",
    ),
    (
        "kiln_agent_requests_total",
        "counter",
        "Agent API requests by endpoint and outcome.",
    ),
    (
        "kiln_reconcile_panics_total",
        "counter",
        "Host reconciles that panicked (contained; the host is retried after a backoff).",
    ),
    (
        "kiln_bmc_budget_deferrals_total",
        "counter",
        "BMC actions deferred because the host's BMC call budget was spent.",
    ),
    (
        "kiln_lease_changes_total",
        "counter",
        "Host leases this replica gained or released (several replicas on one database).",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: Labels) {
        self.add(name, labels, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, labels: Labels, n: u64) {
        *self
            .inner
            .lock()
            .expect("metrics lock")
            .counters
            .entry((name, labels))
            .or_default() += n;
    }

    pub fn observe(&self, name: &'static str, labels: Labels, secs: f64) {
        let mut g = self.inner.lock().expect("metrics lock");
        let h = g.histograms.entry((name, labels)).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS_SECS.len()];
        }
        for (i, b) in BUCKETS_SECS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Renders the text exposition format, with `hosts_by_state` as the `kiln_hosts` gauge.
    pub fn render(&self, hosts_by_state: &BTreeMap<(String, String), u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP kiln_hosts Hosts by provisioning state and operational status.\n# TYPE kiln_hosts gauge\n",
        );
        for ((state, op), n) in hosts_by_state {
            let _ = writeln!(out, "kiln_hosts{{state=\"{state}\",operational_status=\"{op}\"}} {n}");
        }
        let g = self.inner.lock().expect("metrics lock");
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in g.counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(labels, None));
            }
            for ((n, labels), h) in g.histograms.iter().filter(|((n, _), _)| n == name) {
                for (i, b) in BUCKETS_SECS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        fmt_labels(labels, Some(&b.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(out, "{n}_bucket{} {}", fmt_labels(labels, Some("+Inf")), h.count);
                let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(labels, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", fmt_labels(labels, None), h.count);
            }
        }
        out
    }
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "'")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}
