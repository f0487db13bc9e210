//! Shared test support: a map-backed request view and binomial bounds.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;

use canary_core::RequestHeaders;

/// Request headers from a table; records which headers the decision asked for.
#[derive(Default)]
pub struct MapHeaders {
    pub values: HashMap<String, String>,
    pub asked: RefCell<Vec<String>>,
}

impl MapHeaders {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        Self {
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            asked: RefCell::new(Vec::new()),
        }
    }
}

impl RequestHeaders for MapHeaders {
    fn header(&self, name: &str) -> Option<&str> {
        self.asked.borrow_mut().push(name.to_owned());
        self.values.get(name).map(String::as_str)
    }
}

/// Accepted range for a binomial count: mean +- z standard deviations, z = 5 (a correct
/// implementation falls outside with probability < 6e-7 per check).
pub fn binomial_bounds(n: u64, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 5.0 * sd, mean + 5.0 * sd)
}

pub fn assert_binomial(observed: u64, n: u64, p: f64, what: &str) {
    let (lo, hi) = binomial_bounds(n, p);
    assert!(
        (observed as f64) >= lo && (observed as f64) <= hi,
        "{what}: {observed} of {n} outside the 5-sigma binomial range [{lo:.1}, {hi:.1}] for p={p}"
    );
}
