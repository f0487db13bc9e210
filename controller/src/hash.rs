//! The pod-template hash: names ReplicaSets (`<rollout>-<hash>`) and labels their pods
//! (`rollouts-pod-template-hash`), which the DestinationRule subsets select.
//!
//! Definition (stable across controller versions, documented so tools can recompute it):
//! 1. take the pod template as JSON, without the `rollouts-pod-template-hash` label;
//! 2. serialize it canonically: object keys sorted, no whitespace (`serde_json` formatting of
//!    strings and numbers);
//! 3. FNV-1a 64 over those bytes;
//! 4. encode in the Kubernetes "safe" alphabet `bcdfghjklmnpqrstvwxz2456789` (no vowels, no
//!    look-alikes), least significant digit first, 10 characters.

use serde_json::Value;

use canary_core::config::POD_TEMPLATE_HASH_LABEL;

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of a pod template (as JSON).
pub fn pod_template_hash(template: &Value) -> String {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let mut canonical = String::new();
    write_canonical(&t, &mut canonical);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let base = SAFE_ALPHABET.len() as u64;
    (0..10)
        .map(|_| {
            let digit = (h % base) as usize;
            h /= base;
            SAFE_ALPHABET
                .get(digit)
                .copied()
                .map(char::from)
                .unwrap_or('b')
        })
        .collect()
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = m.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_and_its_own_label() {
        let a = json!({"metadata": {"labels": {"app": "reviews", "version": "v2"}}, "spec": {"containers": [{"name": "r", "image": "reviews:v2"}]}});
        let b = json!({"spec": {"containers": [{"image": "reviews:v2", "name": "r"}]}, "metadata": {"labels": {"version": "v2", "app": "reviews", "rollouts-pod-template-hash": "old"}}});
        assert_eq!(pod_template_hash(&a), pod_template_hash(&b));
        assert_eq!(pod_template_hash(&a).len(), 10);
        assert!(pod_template_hash(&a)
            .bytes()
            .all(|c| SAFE_ALPHABET.contains(&c)));
    }

    #[test]
    fn a_changed_image_changes_the_hash() {
        let a = json!({"spec": {"containers": [{"name": "r", "image": "reviews:v1"}]}});
        let b = json!({"spec": {"containers": [{"name": "r", "image": "reviews:v2"}]}});
        assert_ne!(pod_template_hash(&a), pod_template_hash(&b));
    }

    /// Pinned: changing the definition would move every running rollout to a "new" template.
    /// Recomputed independently with Python: `json.dumps(t, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False)`, FNV-1a 64, then base-27 digits of the safe alphabet.
    #[test]
    fn the_hash_of_a_known_template_is_pinned() {
        let t = json!({"metadata": {"labels": {"app": "reviews"}}, "spec": {"containers": [{"image": "reviews:v1", "name": "reviews"}]}});
        assert_eq!(pod_template_hash(&t), PINNED);
    }
    const PINNED: &str = "rjlk8jb5bx";
}
