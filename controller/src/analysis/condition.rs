//! Success and failure conditions: expr-lang (<https://expr-lang.org>) evaluated on `result`,
//! with Argo Rollouts' semantics and functions.
//!
//! The `expr-lang` crate (2.1) parses `.field` inside a predicate only as a whole-predicate
//! shorthand: `asFloat(.value)` compiles to a call with NO argument. Go's expr reads `.value`
//! as `#.value` (the current element), and Argo templates rely on it, so before compiling we
//! rewrite a `.name` that starts an operand into `#.name` (outside string literals).

use expr::{Context, Environment, Program, Value as ExprValue};
use serde_json::Value;

use super::run::AnalysisPhase;

/// A compiled condition.
pub struct Condition {
    source: String,
    program: Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl Condition {
    /// Compiles `source`; the error is a sentence naming the problem.
    pub fn compile(source: &str) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("condition is empty".into());
        }
        let program = expr::compile(&current_element_shorthand(source)).map_err(|e| {
            format!(
                "condition {source:?} does not compile: {}",
                one_line(&e.to_string())
            )
        })?;
        Ok(Self {
            source: source.to_owned(),
            program,
        })
    }

    /// Evaluates on `result`. Anything but a boolean is an error.
    pub fn holds(&self, result: &Value) -> Result<bool, String> {
        let mut ctx = Context::default();
        ctx.insert("result", to_expr(result));
        match environment().run(&self.program, &ctx) {
            Ok(ExprValue::Bool(b)) => Ok(b),
            // The value last: a long one is shortened from its end once redacted.
            Ok(other) => Err(format!(
                "condition {:?} must give true or false, not {}",
                self.source,
                describe(&other)
            )),
            Err(e) => Err(format!(
                "condition {:?}: {}",
                self.source,
                one_line(&e.to_string())
            )),
        }
    }

    /// Whether the condition itself deals with NaN (calls `isNaN`).
    fn handles_nan(&self) -> bool {
        self.source.contains("isNaN")
    }
}

/// Judges one result with Argo's rules: with both conditions, Failed if the failure condition
/// holds, Successful if the success condition holds, else Inconclusive; with one condition,
/// the other is its negation; with none, Successful. Returns the phase and, for Error, why.
///
/// Defined cases that are errors (an Error measurement, counted against
/// `consecutiveErrorLimit`, never a pass): a condition that does not compile or does not give a
/// boolean, a type error (comparing a string with a number, a missing field, an index out of
/// range), a result with no data (`no_data`), and a NaN anywhere in the result unless a
/// condition calls `isNaN` (a rate over zero requests is NaN: not evidence of health).
pub fn judge(
    success: Option<&str>,
    failure: Option<&str>,
    result: &Value,
    no_data: bool,
) -> (AnalysisPhase, Option<String>) {
    let compiled = |c: Option<&str>| {
        c.filter(|s| !s.trim().is_empty())
            .map(Condition::compile)
            .transpose()
    };
    let (success, failure) = match (compiled(success), compiled(failure)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return (AnalysisPhase::Error, Some(e)),
    };
    if no_data {
        return (
            AnalysisPhase::Error,
            Some("the query returned no data".into()),
        );
    }
    let nan_handled = success
        .iter()
        .chain(failure.iter())
        .any(Condition::handles_nan);
    if !nan_handled && contains_nan(result) {
        return (
            AnalysisPhase::Error,
            Some("the result is NaN (no data to judge, e.g. a rate over zero requests); use isNaN() in a condition to judge it".into()),
        );
    }
    let eval = |c: &Option<Condition>| c.as_ref().map(|c| c.holds(result)).transpose();
    let (ok, bad) = match (eval(&success), eval(&failure)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return (AnalysisPhase::Error, Some(e)),
    };
    let (ok, bad) = match (ok, bad) {
        (None, None) => (true, false),
        (Some(s), None) => (s, !s),
        (None, Some(f)) => (!f, f),
        (Some(s), Some(f)) => (s, f),
    };
    if bad {
        (AnalysisPhase::Failed, None)
    } else if ok {
        (AnalysisPhase::Successful, None)
    } else {
        (AnalysisPhase::Inconclusive, None)
    }
}

fn contains_nan(v: &Value) -> bool {
    match v {
        Value::String(s) => s.eq_ignore_ascii_case("nan"),
        Value::Array(a) => a.iter().any(contains_nan),
        Value::Object(o) => o.values().any(contains_nan),
        _ => false,
    }
}

/// JSON to expr values. Numbers stay integers when they are; `"NaN"`, `"+Inf"`, `"-Inf"`
/// strings (Prometheus' spelling) become floats.
pub fn to_expr(v: &Value) -> ExprValue {
    match v {
        Value::Null => ExprValue::Nil,
        Value::Bool(b) => ExprValue::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(ExprValue::Integer)
            .unwrap_or_else(|| ExprValue::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => match s.as_str() {
            "NaN" => ExprValue::Float(f64::NAN),
            "+Inf" | "Inf" => ExprValue::Float(f64::INFINITY),
            "-Inf" => ExprValue::Float(f64::NEG_INFINITY),
            _ => ExprValue::String(s.clone()),
        },
        Value::Array(a) => ExprValue::Array(a.iter().map(to_expr).collect()),
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), to_expr(v))).collect(),
    }
}

/// A value as messages quote it, in full: a message is shortened only after Secret values are
/// redacted from it (`provider::measure`), so a cut never leaves part of one behind.
fn describe(v: &ExprValue) -> String {
    format!("{v:?}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn err(message: String) -> expr::Error {
    expr::Error::ExprError(message)
}

/// expr's built-ins plus Argo's functions.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_function("asFloat", |c| match c.args.as_slice() {
        [ExprValue::Float(f)] => Ok(ExprValue::Float(*f)),
        [ExprValue::Integer(i)] => Ok(ExprValue::Float(*i as f64)),
        [ExprValue::String(s)] => s
            .trim()
            .parse::<f64>()
            .map(ExprValue::Float)
            .map_err(|_| err(format!("asFloat: {s:?} is not a number"))),
        [other] => Err(err(format!("asFloat: {} is not a number", describe(other)))),
        _ => Err(err("asFloat takes one argument".into())),
    });
    env.add_function("asInt", |c| match c.args.as_slice() {
        [ExprValue::Integer(i)] => Ok(ExprValue::Integer(*i)),
        [ExprValue::Float(f)] if f.fract() == 0.0 && f.is_finite() => {
            Ok(ExprValue::Integer(*f as i64))
        }
        [ExprValue::String(s)] => s
            .trim()
            .parse::<i64>()
            .map(ExprValue::Integer)
            .map_err(|_| err(format!("asInt: {s:?} is not an integer"))),
        [other] => Err(err(format!("asInt: {} is not an integer", describe(other)))),
        _ => Err(err("asInt takes one argument".into())),
    });
    env.add_function("isNaN", |c| match c.args.as_slice() {
        [ExprValue::Float(f)] => Ok(ExprValue::Bool(f.is_nan())),
        [ExprValue::Integer(_)] => Ok(ExprValue::Bool(false)),
        [other] => Err(err(format!("isNaN: {} is not a number", describe(other)))),
        _ => Err(err("isNaN takes one argument".into())),
    });
    env.add_function("isInf", |c| match c.args.as_slice() {
        [ExprValue::Float(f)] => Ok(ExprValue::Bool(f.is_infinite())),
        [ExprValue::Integer(_)] => Ok(ExprValue::Bool(false)),
        [other] => Err(err(format!("isInf: {} is not a number", describe(other)))),
        _ => Err(err("isInf takes one argument".into())),
    });
    env.add_function("isNil", |c| match c.args.as_slice() {
        [v] => Ok(ExprValue::Bool(v.is_nil())),
        _ => Err(err("isNil takes one argument".into())),
    });
    env.add_function("default", |c| match c.args.as_slice() {
        [v, d] => Ok(if v.is_nil() { d.clone() } else { v.clone() }),
        _ => Err(err("default takes two arguments".into())),
    });
    env
}

/// Rewrites `.name` that starts an operand (after `(`, `,`, `{`, `[`, an operator, or at the
/// start) into `#.name`, leaving string literals and member access (`a.b`, `f().b`) alone.
pub fn current_element_shorthand(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 8);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut last_significant: Option<char> = None;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
                last_significant = Some(c);
            }
            continue;
        }
        if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
            out.push(c);
            continue;
        }
        if c == '.' {
            let next_starts_name = chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_');
            let after_operand = last_significant.is_some_and(|p| {
                p.is_ascii_alphanumeric()
                    || matches!(
                        p,
                        '_' | ')' | ']' | '}' | '"' | '\'' | '`' | '#' | '?' | '.'
                    )
            });
            if next_starts_name && !after_operand {
                out.push('#');
            }
        }
        out.push(c);
        if !c.is_whitespace() {
            last_significant = Some(c);
        }
    }
    out
}
