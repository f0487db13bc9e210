//! Exact binomial acceptance regions: how many of `n` independent requests may land on canary
//! at a canary share `p` before the count says the split is not `p`.
//!
//! A correct split of `n` requests puts `X ~ Binomial(n, p)` of them on canary. A check that
//! accepts `lo..=hi` fails a correct split with probability `P(X < lo) + P(X > hi)`. This module
//! finds the narrowest such region whose two tails each hold at most `alpha / 2` of the
//! probability, computed from the exact binomial distribution, so the stated false-alarm rate
//! `alpha` is an upper bound, not an approximation. (The usual `mean ± z·sd` understates the
//! upper tail several-fold at the small shares a canary starts with: at 1 to 50 basis points the
//! distribution is far from symmetric.)
//!
//! The tails are summed term by term from the far end inward, each term from a recurrence
//! anchored at a point evaluated with Loader's saddle-point formula (the method behind R's
//! `dbinom`), so small tails keep their relative precision. The work grows with the standard
//! deviation, not with `n`: about `40·sqrt(n·p·(1-p))` multiplications (some 60,000 at
//! `n = 1e7`, `p = 0.5`). Nothing allocates and nothing panics.

use std::f64::consts::{LN_2, PI};
use std::fmt;

/// The largest trial count accepted. Counts are handled as `f64`, exact to 2^53; the bound is
/// lower to keep the work (proportional to the standard deviation) under a second.
pub const MAX_TRIALS: u64 = 1 << 40;

/// A tail term whose remaining sum is below this fraction of the tail's budget is not summed:
/// its bound is added instead, so the stated tail mass stays an upper bound.
const NEGLIGIBLE: f64 = 1e-12;

/// Why an acceptance region cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinomialError {
    /// The success probability is not a number in `0..=1`.
    Probability(f64),
    /// The false-alarm rate is not a number strictly between 0 and 1.
    FalseAlarmRate(f64),
    /// More trials than [`MAX_TRIALS`].
    TooManyTrials(u64),
}

impl fmt::Display for BinomialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Probability(p) => write!(f, "probability {p} is not in 0..=1"),
            Self::FalseAlarmRate(a) => {
                write!(f, "false-alarm rate {a} is not strictly between 0 and 1")
            }
            Self::TooManyTrials(n) => {
                write!(f, "{n} trials is more than the limit of {MAX_TRIALS}")
            }
        }
    }
}

impl std::error::Error for BinomialError {}

/// The counts of successes a correct `Binomial(trials, probability)` process produces, except
/// with probability at most `false_alarm_rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptanceRegion {
    /// The number of trials `n`.
    pub trials: u64,
    /// The success probability `p`.
    pub probability: f64,
    /// The false-alarm rate `alpha` the region was built for (two-sided).
    pub false_alarm_rate: f64,
    /// The smallest accepted count: the largest `lo` with `P(X < lo) <= alpha / 2`.
    pub lo: u64,
    /// The largest accepted count: the smallest `hi` with `P(X > hi) <= alpha / 2`.
    pub hi: u64,
    /// `P(X < lo)`, from above (exact to about 1e-11 relative).
    pub below: f64,
    /// `P(X > hi)`, from above (exact to about 1e-11 relative).
    pub above: f64,
}

impl AcceptanceRegion {
    /// Whether `count` successes are consistent with the probability.
    pub fn contains(&self, count: u64) -> bool {
        (self.lo..=self.hi).contains(&count)
    }

    /// The probability that a correct process lands outside the region: at most
    /// [`false_alarm_rate`](Self::false_alarm_rate), usually less (counts are whole numbers).
    pub fn false_alarm_probability(&self) -> f64 {
        self.below + self.above
    }
}

impl fmt::Display for AcceptanceRegion {
    /// `[lo, hi] of n at p = .. (exact binomial; a correct split falls outside with probability ..)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}] of {} at p = {} (exact binomial; a correct split falls outside with \
             probability {:.2e} <= {:.2e})",
            self.lo,
            self.hi,
            self.trials,
            self.probability,
            self.false_alarm_probability(),
            self.false_alarm_rate
        )
    }
}

/// The narrowest region `lo..=hi` with `P(X < lo) <= alpha / 2` and `P(X > hi) <= alpha / 2`
/// for `X ~ Binomial(trials, probability)` and `alpha = false_alarm_rate`.
///
/// `probability` 0 and 1 give the single count 0 and `trials`; no trials give the count 0.
pub fn acceptance_region(
    trials: u64,
    probability: f64,
    false_alarm_rate: f64,
) -> Result<AcceptanceRegion, BinomialError> {
    let p = probability;
    if !(0.0..=1.0).contains(&p) {
        return Err(BinomialError::Probability(p));
    }
    if !(false_alarm_rate > 0.0 && false_alarm_rate < 1.0) {
        return Err(BinomialError::FalseAlarmRate(false_alarm_rate));
    }
    if trials > MAX_TRIALS {
        return Err(BinomialError::TooManyTrials(trials));
    }
    let half = false_alarm_rate / 2.0;
    let q = 1.0 - p;
    let (lo, below) = lower_tail_cut(trials, p, q, half);
    // The upper tail of X is the lower tail of trials - X ~ Binomial(trials, 1 - p).
    let (mirrored, above) = lower_tail_cut(trials, q, p, half);
    Ok(AcceptanceRegion {
        trials,
        probability,
        false_alarm_rate,
        lo,
        hi: trials - mirrored,
        below,
        above,
    })
}

/// Why a count fails [`check_count`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CountCheckError {
    /// The arguments have no acceptance region.
    Invalid(BinomialError),
    /// The count is outside the region: the split is not what the probability says (or a false
    /// alarm, with probability at most the region's rate).
    Outside {
        /// The count observed.
        observed: u64,
        /// The region it should have been in.
        region: AcceptanceRegion,
    },
}

impl fmt::Display for CountCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => e.fmt(f),
            Self::Outside { observed, region } => {
                write!(f, "{observed} of {} is outside {region}", region.trials)
            }
        }
    }
}

impl std::error::Error for CountCheckError {}

/// Checks that `observed` successes of `trials` are consistent with `probability`: `Ok` with
/// the region when the count is inside [`acceptance_region`]`(trials, probability,
/// false_alarm_rate)`. A correct process fails with probability at most `false_alarm_rate`.
pub fn check_count(
    observed: u64,
    trials: u64,
    probability: f64,
    false_alarm_rate: f64,
) -> Result<AcceptanceRegion, CountCheckError> {
    let region = acceptance_region(trials, probability, false_alarm_rate)
        .map_err(CountCheckError::Invalid)?;
    if region.contains(observed) {
        Ok(region)
    } else {
        Err(CountCheckError::Outside { observed, region })
    }
}

/// `P(X = k)` for `X ~ Binomial(trials, probability)`, with full relative precision in the
/// tails. Invalid arguments are errors as in [`acceptance_region`]; `k > trials` gives 0.
pub fn pmf(trials: u64, probability: f64, k: u64) -> Result<f64, BinomialError> {
    if !(0.0..=1.0).contains(&probability) {
        return Err(BinomialError::Probability(probability));
    }
    if trials > MAX_TRIALS {
        return Err(BinomialError::TooManyTrials(trials));
    }
    if k > trials {
        return Ok(0.0);
    }
    Ok(pmf_unchecked(trials, probability, 1.0 - probability, k))
}

/// The largest `lo` with `P(X < lo) <= half` for `X ~ Binomial(n, p)`, and that probability.
/// `q` is `1 - p`, passed separately so that the mirrored call keeps both full precision.
fn lower_tail_cut(n: u64, p: f64, q: f64, half: f64) -> (u64, f64) {
    if p == 0.0 {
        // X = 0: nothing lies below 0, and P(X < 1) = 1.
        return (0, 0.0);
    }
    if q == 0.0 {
        return (n, 0.0);
    }
    let nf = n as f64;
    // The mode: the pmf rises up to it and falls after it.
    let mode = (((nf + 1.0) * p).floor() as u64).min(n);

    // Walk down from the mode until the rest of the lower tail is negligible. Below the mode
    // the ratio pmf(k-1)/pmf(k) = k·q / ((n-k+1)·p) shrinks as k falls, so the rest is at most
    // a geometric series in the current ratio.
    let mut start = mode;
    let mut term = pmf_unchecked(n, p, q, mode);
    let mut rest = 0.0;
    while start > 0 {
        let k = start as f64;
        let ratio = k * q / ((nf - k + 1.0) * p);
        if ratio < 1.0 {
            let bound = term * ratio / (1.0 - ratio);
            if bound <= half * NEGLIGIBLE {
                rest = bound;
                break;
            }
        }
        term *= ratio;
        start -= 1;
    }

    // Sum upward from there, smallest terms first. Re-anchor the first term: the walk down
    // has accumulated rounding.
    let mut below = rest;
    let mut term = pmf_unchecked(n, p, q, start);
    let mut k = start;
    loop {
        if below + term > half {
            return (k, below);
        }
        if k >= n {
            // Unreachable for half < 1/2 (the whole distribution sums to 1); keeps the
            // function total under rounding.
            return (n, below);
        }
        below += term;
        let kf = k as f64;
        term *= (nf - kf) * p / ((kf + 1.0) * q);
        k += 1;
    }
}

/// `P(X = k)` for `0 <= k <= n` and `q = 1 - p`. Loader's saddle-point form: the Stirling
/// remainders and the deviance terms are each small and precise, so nothing cancels.
fn pmf_unchecked(n: u64, p: f64, q: f64, k: u64) -> f64 {
    if p == 0.0 {
        return if k == 0 { 1.0 } else { 0.0 };
    }
    if q == 0.0 {
        return if k == n { 1.0 } else { 0.0 };
    }
    let nf = n as f64;
    if k == 0 {
        return (nf * ln_complement(q, p)).exp();
    }
    if k == n {
        return (nf * ln_complement(p, q)).exp();
    }
    let kf = k as f64;
    let rest = nf - kf;
    let log_core = stirling_remainder(nf)
        - stirling_remainder(kf)
        - stirling_remainder(rest)
        - deviance(kf, nf * p)
        - deviance(rest, nf * q);
    let log_scale = (2.0 * PI).ln() + kf.ln() + (-kf / nf).ln_1p();
    (log_core - 0.5 * log_scale).exp()
}

/// `ln(x)` where `x = 1 - other`: through `ln_1p` when `x` is near 1, where `ln(x)` would lose
/// the digits of `other`.
fn ln_complement(x: f64, other: f64) -> f64 {
    if x > 0.5 {
        (-other).ln_1p()
    } else {
        x.ln()
    }
}

/// `ln(k!) - [(k + 1/2)·ln(k) - k + ln(2π)/2]`, the error of Stirling's formula, for `k >= 1`.
fn stirling_remainder(k: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if k <= 15.0 {
        // Small enough to take ln(k!) as a sum: a few terms, each exact to an ulp.
        let mut ln_factorial = 0.0;
        let mut i = 2.0;
        while i <= k {
            ln_factorial += f64::ln(i);
            i += 1.0;
        }
        let ln_sqrt_2pi = 0.5 * (LN_2 + PI.ln());
        return ln_factorial - ((k + 0.5) * k.ln() - k + ln_sqrt_2pi);
    }
    // The asymptotic series, cut where the next term is below an ulp.
    let kk = k * k;
    if k > 500.0 {
        (S0 - S1 / kk) / k
    } else if k > 80.0 {
        (S0 - (S1 - S2 / kk) / kk) / k
    } else if k > 35.0 {
        (S0 - (S1 - (S2 - S3 / kk) / kk) / kk) / k
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / kk) / kk) / kk) / kk) / k
    }
}

/// `x·ln(x/mean) + mean - x`, the binomial deviance term, without the cancellation of the
/// direct form when `x` is near `mean`.
fn deviance(x: f64, mean: f64) -> f64 {
    let diff = x - mean;
    if diff.abs() < 0.1 * (x + mean) {
        // x·ln(x/mean) + mean - x = diff·v + 2x·(v³/3 + v⁵/5 + ...), v = diff / (x + mean).
        let v = diff / (x + mean);
        let v2 = v * v;
        let mut sum = diff * v;
        let mut power = 2.0 * x * v;
        let mut j = 1.0;
        // |v| < 0.1: each term is 100x smaller, so ~8 terms reach an ulp.
        while j < 100.0 {
            power *= v2;
            let next = sum + power / (2.0 * j + 1.0);
            if next == sum {
                break;
            }
            sum = next;
            j += 1.0;
        }
        return sum;
    }
    x * (x / mean).ln() + mean - x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// (n, p in basis points, alpha, lo, hi, P(X < lo), P(X > hi)), computed independently with
    /// exact rational arithmetic (Python `fractions` and `math.comb`: the pmf numerators
    /// `comb(n, k)·w^k·(10000 - w)^(n - k)` summed from each end and compared with
    /// `alpha/2 · 10000^n` as integers).
    const EXACT: [(u64, u32, f64, u64, u64, f64, f64); 13] = [
        (0, 5000, 1e-6, 0, 0, 0.0, 0.0),
        (10, 3000, 0.05, 0, 6, 0.0, 0.0105920784),
        (20, 5000, 1e-6, 0, 20, 0.0, 0.0),
        (100, 50, 1e-6, 0, 7, 0.0, 4.830219696498295e-08),
        (100, 50, 0.05, 0, 2, 0.0, 0.014102916535846968),
        (1000, 50, 1e-6, 0, 19, 0.0, 3.0982250424545107e-07),
        (
            1000,
            2000,
            1e-6,
            141,
            264,
            4.790925424252054e-07,
            4.1532364056846013e-07,
        ),
        (
            1000,
            1000,
            1e-6,
            57,
            149,
            3.9153062262122094e-07,
            4.4894428594500086e-07,
        ),
        (
            2000,
            5000,
            1e-6,
            891,
            1109,
            4.7505844669341367e-07,
            4.7505844669341367e-07,
        ),
        (
            20000,
            50,
            1e-6,
            55,
            152,
            3.241804422220241e-07,
            4.824088274256834e-07,
        ),
        (5000, 1, 1e-6, 0, 7, 0.0, 6.18919272543087e-08),
        (300, 9999, 1e-3, 299, 300, 0.000439688258828952, 0.0),
        (1, 5000, 0.5, 0, 1, 0.0, 0.0),
    ];

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-10 * want.abs() + 1e-300
    }

    #[test]
    fn regions_match_exact_rational_arithmetic() {
        for (n, w, alpha, lo, hi, below, above) in EXACT {
            let p = f64::from(w) / 10_000.0;
            let r = acceptance_region(n, p, alpha).unwrap();
            assert_eq!((r.lo, r.hi), (lo, hi), "n={n} p={p} alpha={alpha}");
            assert!(close(r.below, below), "n={n} p={p}: below {}", r.below);
            assert!(close(r.above, above), "n={n} p={p}: above {}", r.above);
        }
    }

    /// The defining property at many (n, p): each tail is within its budget, and moving either
    /// end inward by one would put more than the budget outside.
    #[test]
    fn each_tail_is_within_half_alpha_and_narrowing_by_one_exceeds_it() {
        for n in [1u64, 2, 7, 30, 99, 1_000, 12_345, 200_000, 10_000_000] {
            for w in [1u32, 7, 50, 100, 1_000, 2_000, 5_000, 9_000, 9_999] {
                for alpha in [1e-9, 1e-6, 1e-3, 0.1] {
                    let p = f64::from(w) / 10_000.0;
                    let r = acceptance_region(n, p, alpha).unwrap();
                    let half = alpha / 2.0;
                    let at = |k| pmf(n, p, k).unwrap();
                    assert!(r.below <= half && r.above <= half, "{r}");
                    assert!(r.lo <= r.hi, "{r}");
                    assert!(r.below + at(r.lo) > half * (1.0 + 1e-9), "lo+1 fits: {r}");
                    assert!(r.above + at(r.hi) > half * (1.0 + 1e-9), "hi-1 fits: {r}");
                }
            }
        }
    }

    #[test]
    fn the_pmf_matches_exact_values_and_sums_to_one() {
        // comb(10, 3)·0.3^3·0.7^7 and 0.0005^0·0.9995^1000, exactly (Python fractions).
        assert!(close(pmf(10, 0.3, 3).unwrap(), 0.266_827_932));
        assert!(close(
            pmf(1000, 0.0005, 0).unwrap(),
            6.064_548_228_400_616e-1
        ));
        assert_eq!(pmf(10, 0.3, 11).unwrap(), 0.0);
        for (n, p) in [(50u64, 0.02), (1_000, 0.5), (3_000, 0.9)] {
            let total: f64 = (0..=n).map(|k| pmf(n, p, k).unwrap()).sum();
            assert!((total - 1.0).abs() < 1e-12, "n={n} p={p}: {total}");
        }
    }

    #[test]
    fn certain_and_impossible_outcomes_and_no_trials_give_a_single_count() {
        let r = acceptance_region(1_000, 0.0, 1e-6).unwrap();
        assert_eq!((r.lo, r.hi, r.false_alarm_probability()), (0, 0, 0.0));
        let r = acceptance_region(1_000, 1.0, 1e-6).unwrap();
        assert_eq!(
            (r.lo, r.hi, r.false_alarm_probability()),
            (1_000, 1_000, 0.0)
        );
        let r = acceptance_region(0, 0.3, 1e-6).unwrap();
        assert_eq!((r.lo, r.hi), (0, 0));
        assert!(r.contains(0) && !r.contains(1));
    }

    #[test]
    fn the_region_of_1_minus_p_is_the_mirror_image() {
        for (n, w) in [(1_000u64, 50u32), (77_777, 2_500), (10_000_000, 3)] {
            let p = f64::from(w) / 10_000.0;
            let q = f64::from(10_000 - w) / 10_000.0;
            let a = acceptance_region(n, p, 1e-6).unwrap();
            let b = acceptance_region(n, q, 1e-6).unwrap();
            assert_eq!((a.lo, a.hi), (n - b.hi, n - b.lo), "n={n} w={w}");
        }
    }

    #[test]
    fn a_count_is_checked_against_its_region() {
        assert!(check_count(1_000, 2_000, 0.5, 1e-6).is_ok());
        assert!(check_count(891, 2_000, 0.5, 1e-6).is_ok());
        let e = check_count(890, 2_000, 0.5, 1e-6).unwrap_err();
        assert!(matches!(e, CountCheckError::Outside { observed: 890, .. }));
        assert!(
            e.to_string()
                .starts_with("890 of 2000 is outside [891, 1109] of 2000 at p = 0.5"),
            "{e}"
        );
        assert!(check_count(1_110, 2_000, 0.5, 1e-6).is_err());
        assert!(matches!(
            check_count(1, 2, 2.0, 1e-6),
            Err(CountCheckError::Invalid(BinomialError::Probability(_)))
        ));
    }

    #[test]
    fn invalid_arguments_are_errors_not_panics() {
        assert_eq!(
            acceptance_region(10, 1.5, 1e-6),
            Err(BinomialError::Probability(1.5))
        );
        assert!(matches!(
            acceptance_region(10, f64::NAN, 1e-6),
            Err(BinomialError::Probability(_))
        ));
        for alpha in [0.0, 1.0, -1.0, f64::NAN] {
            assert!(matches!(
                acceptance_region(10, 0.5, alpha),
                Err(BinomialError::FalseAlarmRate(_))
            ));
        }
        assert_eq!(
            acceptance_region(MAX_TRIALS + 1, 0.5, 1e-6),
            Err(BinomialError::TooManyTrials(MAX_TRIALS + 1))
        );
        assert!(pmf(10, -0.1, 1).is_err());
    }

    /// The normal approximation this replaced (mean ± 5 sd) put more than its claimed 6e-7
    /// outside at small shares; the exact region never exceeds its rate.
    #[test]
    fn the_stated_rate_holds_where_five_sigma_did_not() {
        let (n, p) = (20_000u64, 0.005);
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let five_sigma_hi = (n as f64 * p + 5.0 * sd).floor() as u64;
        let beyond: f64 = (five_sigma_hi + 1..=n.min(1_000))
            .map(|k| pmf(n, p, k).unwrap())
            .sum();
        assert!(beyond > 1e-6, "5 sigma's upper tail alone: {beyond:e}");
        let r = acceptance_region(n, p, 1e-6).unwrap();
        assert!(r.false_alarm_probability() <= 1e-6);
        assert!(r.hi > five_sigma_hi, "{r} vs 5 sigma {five_sigma_hi}");
    }
}
