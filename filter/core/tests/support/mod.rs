//! Shared test support: a map-backed request view and the binomial check.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;

use canary_core::binomial::check_count;
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

/// Asserts that `observed` of `n` is inside the exact binomial acceptance region for `p` at
/// false-alarm rate `alpha` (a correct implementation fails with probability at most `alpha`).
pub fn assert_binomial(observed: u64, n: u64, p: f64, alpha: f64, what: &str) {
    if let Err(e) = check_count(observed, n, p, alpha) {
        panic!("{what}: {e}");
    }
}
