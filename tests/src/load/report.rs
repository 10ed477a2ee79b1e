//! Results: a table for people, JSON for machines.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The slowest.
    pub max_us: u64,
    /// (quantile, latency in µs) from 0 to 0.9999, for the plot.
    pub percentiles: Vec<(f64, u64)>,
}

/// Where the plot's curve is sampled: dense in the tail.
const CURVE: [f64; 22] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998,
    0.999, 0.9995, 0.9997, 0.9998, 0.9999,
];

impl Latency {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            percentiles: CURVE
                .iter()
                .map(|q| (*q, h.value_at_quantile(*q)))
                .collect(),
        }
    }
}

/// A new latency histogram: 1 µs to an hour, 3 significant digits.
/// Longest latency recorded as itself (an hour, in µs): a message to 1,000
/// members, all decrypting on one machine, takes minutes.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, MAX_LATENCY_US));
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The parameters it ran with, as given.
    pub params: Vec<(String, String)>,
    /// Headline figures, name → value (units in the name).
    pub figures: Vec<(String, f64)>,
    /// Latency percentiles, where the scenario measures one.
    pub latency: Option<Latency>,
    /// Requests that failed (or, where said, were not delivered by the end).
    pub errors: u64,
    /// Why the first of them failed.
    pub first_error: Option<String>,
}

/// Calls that failed, shared by a scenario's tasks: how many, and why the first.
#[derive(Debug, Default, Clone)]
pub(crate) struct Failures(Rc<RefCell<(u64, Option<String>)>>);

impl Failures {
    /// Notes one failed call.
    pub(crate) fn note(&self, why: impl std::fmt::Display) {
        let mut f = self.0.borrow_mut();
        f.0 += 1;
        if f.1.is_none() {
            f.1 = Some(why.to_string());
        }
    }

    /// How many calls failed.
    pub(crate) fn count(&self) -> u64 {
        self.0.borrow().0
    }

    /// Puts them in `report`.
    pub(crate) fn write_to(&self, report: &mut Report) {
        let f = self.0.borrow();
        report.errors = f.0;
        report.first_error = f.1.clone();
    }
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.into(),
            params: Vec::new(),
            figures: Vec::new(),
            latency: None,
            errors: 0,
            first_error: None,
        }
    }

    /// Records a parameter.
    pub fn param(mut self, k: &str, v: impl ToString) -> Report {
        self.params.push((k.into(), v.to_string()));
        self
    }

    /// Records a figure.
    pub fn figure(&mut self, k: &str, v: f64) {
        self.figures.push((k.into(), v));
    }

    /// A figure by name.
    pub fn get(&self, k: &str) -> Option<f64> {
        self.figures.iter().find(|(n, _)| n == k).map(|(_, v)| *v)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut out = format!("scenario {}\n", self.scenario);
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out += &format!("  params   {}\n", params.join(" "));
        for (k, v) in &self.figures {
            out += &format!("  {k:<28} {v:>14.1}\n");
        }
        if let Some(l) = &self.latency {
            out += &format!(
                "  {:<28} {:>14}\n  {:<28} p50 {} µs  p99 {} µs  p999 {} µs  max {} µs\n",
                "samples", l.count, "latency", l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        out += &format!("  {:<28} {:>14}\n", "errors", self.errors);
        if let Some(why) = &self.first_error {
            out += &format!("  {:<28} {why}\n", "first error");
        }
        out
    }
}
