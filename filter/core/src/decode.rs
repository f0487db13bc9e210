//! JSON -> [`PluginConfig`], by hand, with the exact path of every bad field.
//!
//! Why not `#[derive(Deserialize)]`: in the .wasm the derive (plus path tracking) cost ~55 KB,
//! over a quarter of the size budget, and its messages omit the field for type errors. The
//! decoder below walks a `serde_json::Value` once; the round-trip tests pin it to the `Serialize`
//! derive, so what the controller writes is what the filter reads.

use serde_json::{Map, Value};

use crate::config::{
    CanaryService, FilterMode, HeaderRoute, PluginConfig, RequestMatch, StickyKey, StringMatch,
};
use crate::error::ConfigError;

type Result<T> = std::result::Result<T, ConfigError>;

pub(crate) fn plugin_config(v: &Value) -> Result<PluginConfig> {
    let path = "";
    let m = object(
        path,
        v,
        &[
            "mode",
            "decisionHeader",
            "writeStableDecision",
            "hashHeader",
            "versionHeader",
            "services",
        ],
    )?;
    let mut config = PluginConfig::default();
    if let Some(mode) = m.get("mode") {
        config.mode = match string("mode", mode)? {
            "client" => FilterMode::Client,
            "server" => FilterMode::Server,
            other => return Err(unknown_variant("mode", other, &["client", "server"])),
        };
    }
    if let Some(h) = m.get("decisionHeader") {
        config.decision_header = string("decisionHeader", h)?.to_owned();
    }
    if let Some(w) = m.get("writeStableDecision") {
        config.write_stable_decision = w
            .as_bool()
            .ok_or_else(|| invalid_type("writeStableDecision", w, "a boolean"))?;
    }
    config.hash_header = optional_string("hashHeader", m.get("hashHeader"))?;
    if let Some(h) = m.get("versionHeader") {
        config.version_header = string("versionHeader", h)?.to_owned();
    }
    match m.get("services") {
        None | Some(Value::Null) => {}
        // The older list form: each entry carries its `name`.
        Some(Value::Array(list)) => {
            config.services = list
                .iter()
                .enumerate()
                .map(|(i, s)| service(&format!("services[{i}]"), s, None))
                .collect::<Result<_>>()?;
        }
        // Keyed by name, as the controller writes it (see `PluginConfig::services`).
        Some(Value::Object(by_name)) => {
            config.services = by_name
                .iter()
                .map(|(name, s)| service(&format!("services[{name:?}]"), s, Some(name)))
                .collect::<Result<_>>()?;
        }
        Some(other) => {
            return Err(invalid_type(
                "services",
                other,
                "an object keyed by service name (or a list of services)",
            ))
        }
    }
    Ok(config)
}

/// One service: `key` is its name when `services` is keyed by name (an entry may then repeat
/// it as `name`, with the same value).
fn service(path: &str, v: &Value, key: Option<&str>) -> Result<CanaryService> {
    let m = object(
        path,
        v,
        &[
            "name",
            "hosts",
            "canaryWeight",
            "stableHash",
            "canaryHash",
            "decisionHeader",
            "headerRoutes",
            "sticky",
        ],
    )?;
    let name_path = join(path, "name");
    let name = match (key, m.get("name")) {
        (Some(key), None) => key.to_owned(),
        (Some(key), Some(n)) => {
            let n = string(&name_path, n)?;
            if n != key {
                return Err(ConfigError::new(
                    name_path,
                    format!("{n:?} differs from the entry's key {key:?}"),
                ));
            }
            key.to_owned()
        }
        (None, _) => string(&name_path, required(path, m, "name")?)?.to_owned(),
    };
    let hosts_path = join(path, "hosts");
    let hosts = array(&hosts_path, required(path, m, "hosts")?)?
        .iter()
        .enumerate()
        .map(|(i, h)| string(&format!("{hosts_path}[{i}]"), h).map(str::to_owned))
        .collect::<Result<_>>()?;
    let canary_weight = match m.get("canaryWeight") {
        Some(w) => integer(&join(path, "canaryWeight"), w)?,
        None => 0,
    };
    let routes_path = join(path, "headerRoutes");
    let header_routes = match m.get("headerRoutes") {
        Some(r) => array(&routes_path, r)?
            .iter()
            .enumerate()
            .map(|(i, r)| header_route(&format!("{routes_path}[{i}]"), r))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let sticky = match m.get("sticky") {
        None | Some(Value::Null) => None,
        Some(s) => Some(sticky_key(&join(path, "sticky"), s)?),
    };
    Ok(CanaryService {
        name,
        hosts,
        canary_weight,
        stable_hash: optional_string(&join(path, "stableHash"), m.get("stableHash"))?,
        canary_hash: optional_string(&join(path, "canaryHash"), m.get("canaryHash"))?,
        decision_header: optional_string(&join(path, "decisionHeader"), m.get("decisionHeader"))?,
        header_routes,
        sticky,
    })
}

fn header_route(path: &str, v: &Value) -> Result<HeaderRoute> {
    let m = object(path, v, &["name", "match"])?;
    let name = string(&join(path, "name"), required(path, m, "name")?)?.to_owned();
    let match_path = join(path, "match");
    let matches = array(&match_path, required(path, m, "match")?)?
        .iter()
        .enumerate()
        .map(|(i, x)| request_match(&format!("{match_path}[{i}]"), x))
        .collect::<Result<_>>()?;
    Ok(HeaderRoute { name, matches })
}

fn request_match(path: &str, v: &Value) -> Result<RequestMatch> {
    let m = object(path, v, &["header", "cookie", "value"])?;
    let value_path = join(path, "value");
    let (kind, inner) = one_of(
        &value_path,
        required(path, m, "value")?,
        &["exact", "prefix", "regex"],
    )?;
    let s = string(&format!("{value_path}.{kind}"), inner)?.to_owned();
    let value = match kind {
        "exact" => StringMatch::Exact(s),
        "prefix" => StringMatch::Prefix(s),
        _ => StringMatch::Regex(s),
    };
    Ok(RequestMatch {
        header: optional_string(&join(path, "header"), m.get("header"))?,
        cookie: optional_string(&join(path, "cookie"), m.get("cookie"))?,
        value,
    })
}

fn sticky_key(path: &str, v: &Value) -> Result<StickyKey> {
    let (kind, inner) = one_of(path, v, &["header", "cookie"])?;
    let s = string(&format!("{path}.{kind}"), inner)?.to_owned();
    Ok(if kind == "header" {
        StickyKey::Header(s)
    } else {
        StickyKey::Cookie(s)
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "floating point number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid_type(path: &str, v: &Value, expected: &str) -> ConfigError {
    let field = if path.is_empty() { "(root)" } else { path };
    ConfigError::new(
        field,
        format!("invalid type: {}, expected {expected}", describe(v)),
    )
}

fn object<'a>(path: &str, v: &'a Value, allowed: &[&str]) -> Result<&'a Map<String, Value>> {
    let Value::Object(m) = v else {
        return Err(invalid_type(path, v, "an object"));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ConfigError::new(
            join(path, k),
            format!(
                "unknown field `{k}`, expected one of {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(m)
}

fn required<'a>(path: &str, m: &'a Map<String, Value>, key: &str) -> Result<&'a Value> {
    m.get(key).ok_or_else(|| {
        ConfigError::new(
            if path.is_empty() { "(root)" } else { path },
            format!("missing field `{key}`"),
        )
    })
}

fn string<'a>(path: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| invalid_type(path, v, "a string"))
}

fn optional_string(path: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => string(path, v).map(|s| Some(s.to_owned())),
    }
}

fn array<'a>(path: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| invalid_type(path, v, "an array"))
}

fn integer(path: &str, v: &Value) -> Result<u32> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u32::try_from(u).map_err(|_| {
                    ConfigError::new(
                        path,
                        "invalid value: too large, expected an integer 0..=10000",
                    )
                })
            } else if n.is_i64() {
                Err(ConfigError::new(
                    path,
                    "invalid value: negative, expected an integer 0..=10000",
                ))
            } else {
                Err(invalid_type(
                    path,
                    v,
                    "an integer (basis points: 150 = 1.5%)",
                ))
            }
        }
        other => Err(invalid_type(path, other, "an integer")),
    }
}

/// An object with exactly one key, which names the variant (`{"exact": "v"}`).
fn one_of<'a>(
    path: &str,
    v: &'a Value,
    variants: &[&'static str],
) -> Result<(&'static str, &'a Value)> {
    let Value::Object(m) = v else {
        return Err(invalid_type(path, v, "an object with one key"));
    };
    let mut entries = m.iter();
    let (Some((k, inner)), None) = (entries.next(), entries.next()) else {
        return Err(ConfigError::new(
            path,
            format!(
                "expected exactly one of {}, got {} keys",
                variants.join(", "),
                m.len()
            ),
        ));
    };
    match variants.iter().find(|name| **name == k.as_str()) {
        Some(name) => Ok((name, inner)),
        None => Err(unknown_variant(path, k, variants)),
    }
}

fn unknown_variant(path: &str, got: &str, variants: &[&str]) -> ConfigError {
    ConfigError::new(
        path,
        format!(
            "unknown variant `{got}`, expected one of {}",
            variants.join(", ")
        ),
    )
}
