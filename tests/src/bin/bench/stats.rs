//! Measurements shared by the scenarios: latency histograms (hdrhistogram,
//! in microseconds), a histogram many tasks record into, failure tallies,
//! and the formatting of both for the human summary and the JSON line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::Failure;

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub type Hist = Histogram<u64>;

pub fn histogram() -> Hist {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("the histogram bounds are valid")
}

/// Recording a [`Duration`] into a [`Hist`].
pub trait RecordDuration {
    fn record_duration(&mut self, duration: Duration);
}

impl RecordDuration for Hist {
    fn record_duration(&mut self, duration: Duration) {
        self.saturating_record(micros(duration));
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `{"count", "p50", "p99", "p999", "max", "mean"}`, in milliseconds.
pub fn percentiles(hist: &Hist) -> Value {
    if hist.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": hist.len(),
        "p50": ms(hist.value_at_quantile(0.5)),
        "p99": ms(hist.value_at_quantile(0.99)),
        "p999": ms(hist.value_at_quantile(0.999)),
        "max": ms(hist.max()),
        "mean": round3(hist.mean() / 1000.0),
    })
}

/// `p50 0.412 ms, p99 1.20 ms, p99.9 3.10 ms, max 5.00 ms`.
pub fn describe(hist: &Hist) -> String {
    if hist.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max()),
    )
}

/// A histogram as `[[value, count], ...]`, to send between processes.
pub fn encode(hist: &Hist) -> Value {
    hist.iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

/// The inverse of [`encode`]; malformed entries are skipped.
pub fn decode(value: &Value) -> Hist {
    let mut hist = histogram();
    for pair in value.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = hist.record_n(value.clamp(1, hist.high()), count);
        }
    }
    hist
}

/// A histogram shared by many tasks. Each task records through its own
/// [`Recorder`], which takes the lock once per batch.
#[derive(Clone)]
pub struct SharedHist(Arc<Mutex<Hist>>);

impl SharedHist {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(histogram())))
    }

    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.0.clone(),
            batch: Vec::with_capacity(Recorder::BATCH),
        }
    }

    /// A copy of what has been flushed so far.
    pub fn snapshot(&self) -> Hist {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Buffers samples and adds them to a [`SharedHist`] in batches, and on drop.
pub struct Recorder {
    shared: Arc<Mutex<Hist>>,
    batch: Vec<u64>,
}

impl Recorder {
    const BATCH: usize = 64;

    pub fn record(&mut self, duration: Duration) {
        self.batch.push(micros(duration));
        if self.batch.len() == Self::BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut hist = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        for value in self.batch.drain(..) {
            hist.saturating_record(value);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Failures counted by kind, with the first few messages kept as examples.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    counts: BTreeMap<String, u64>,
    examples: Vec<String>,
}

impl Errors {
    const EXAMPLES: usize = 5;

    pub fn add(&mut self, failure: &Failure) {
        self.add_n(failure.kind, 1, &failure.to_string());
    }

    fn add_n(&mut self, kind: &str, n: u64, example: &str) {
        *self.counts.entry(kind.to_owned()).or_default() += n;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(example.to_owned());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// How many failures of this kind.
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Errors) {
        for (kind, n) in &other.counts {
            *self.counts.entry(kind.clone()).or_default() += n;
        }
        for example in &other.examples {
            if self.examples.len() < Self::EXAMPLES {
                self.examples.push(example.clone());
            }
        }
    }

    /// `{"kind": count, ...}`.
    pub fn kinds(&self) -> Value {
        json!(self.counts)
    }

    /// `{"counts": {...}, "examples": [...]}`, to send between processes.
    pub fn encode(&self) -> Value {
        json!({"counts": self.counts, "examples": self.examples})
    }

    pub fn decode(value: &Value) -> Self {
        let counts = value["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(kind, n)| Some((kind.clone(), n.as_u64()?)))
            .collect();
        let examples = value["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect();
        Self { counts, examples }
    }

    /// `0 errors` or `3 errors (timeout: 2, closed: 1), e.g. timeout: ...`.
    pub fn describe(&self) -> String {
        let total = self.total();
        if total == 0 {
            return "0 errors".to_owned();
        }
        let kinds: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        format!(
            "{total} errors ({}), e.g. {}",
            kinds.join(", "),
            self.examples.first().map_or("", String::as_str)
        )
    }
}

/// A thread-safe [`Errors`].
#[derive(Clone, Default)]
pub struct SharedErrors(Arc<Mutex<Errors>>);

impl SharedErrors {
    pub fn add(&self, failure: &Failure) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(failure);
    }

    pub fn get(&self) -> Errors {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Rounds to 3 decimals, for JSON numbers people read.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
