//! What the filter writes into and removes from the headers (`canary_core::header_edits`), as
//! the upstream and the VirtualService see it: tables of request -> edits. The plugin applies
//! exactly these, one host call each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::type_complexity
)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use canary_core::header_edits::{
    route_client_request, server_edits, version_tag, HeaderEdit, VersionTagError,
};
use canary_core::header_map::{serialize, SerializedHeaders};
use canary_core::{CompiledConfig, Reason, Subset};

const DECISION: &str = "x-canary-subset";
const HASH: &str = "x-canary-pod-template-hash";

/// `reviews` has both hashes; `ratings` has none. Weight 50%: draw 0 is canary, 9999 stable.
fn config(write_stable_decision: bool, hash_header: bool) -> CompiledConfig {
    let mut json = serde_json::json!({
        "writeStableDecision": write_stable_decision,
        "services": [
            {"name": "bookinfo/reviews", "hosts": ["reviews"], "canaryWeight": 5000,
             "stableHash": "6c9f8d5b7d", "canaryHash": "84b7c6f5d9"},
            {"name": "bookinfo/ratings", "hosts": ["ratings"], "canaryWeight": 5000}
        ]
    });
    if hash_header {
        json["hashHeader"] = HASH.into();
    }
    CompiledConfig::from_json(json.to_string().as_bytes()).unwrap()
}

fn set<'a>(name: &'a str, value: &'a str) -> HeaderEdit<'a> {
    HeaderEdit::Set { name, value }
}

fn remove(name: &str) -> HeaderEdit<'_> {
    HeaderEdit::Remove { name }
}

const CANARY: u32 = 0;
const STABLE: u32 = 9_999;

struct Case {
    what: &'static str,
    write_stable: bool,
    hash_header: bool,
    headers: &'static [(&'static str, &'static [u8])],
    draw: u32,
    edits: &'static [(&'static str, Option<&'static str>)],
    decision: Option<Subset>,
}

/// `edits`: (name, Some(value)) is a set, (name, None) a removal.
const CASES: &[Case] = &[
    Case {
        what: "canary: decision and canary hash written",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"reviews:9080")],
        draw: CANARY,
        edits: &[(DECISION, Some("canary")), (HASH, Some("84b7c6f5d9"))],
        decision: Some(Subset::Canary),
    },
    Case {
        what: "stable by default: no decision header (the default route is stable), stable hash",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"reviews")],
        draw: STABLE,
        edits: &[(HASH, Some("6c9f8d5b7d"))],
        decision: Some(Subset::Stable),
    },
    Case {
        what: "stable with writeStableDecision: decision written",
        write_stable: true,
        hash_header: true,
        headers: &[(":authority", b"reviews")],
        draw: STABLE,
        edits: &[(DECISION, Some("stable")), (HASH, Some("6c9f8d5b7d"))],
        decision: Some(Subset::Stable),
    },
    Case {
        what: "stable, client sent canary: overwritten with stable",
        write_stable: false,
        hash_header: true,
        headers: &[
            (":authority", b"reviews"),
            (DECISION, b"canary"),
            (HASH, b"84b7c6f5d9"),
        ],
        draw: STABLE,
        edits: &[(DECISION, Some("stable")), (HASH, Some("6c9f8d5b7d"))],
        decision: Some(Subset::Stable),
    },
    Case {
        what: "stable, client sent a decision that is not UTF-8: still overwritten",
        write_stable: false,
        hash_header: false,
        headers: &[(":authority", b"reviews"), (DECISION, b"\xffcanary")],
        draw: STABLE,
        edits: &[(DECISION, Some("stable"))],
        decision: Some(Subset::Stable),
    },
    Case {
        what: "no hashHeader configured: only the decision",
        write_stable: false,
        hash_header: false,
        headers: &[(":authority", b"reviews")],
        draw: CANARY,
        edits: &[(DECISION, Some("canary"))],
        decision: Some(Subset::Canary),
    },
    Case {
        what: "subset without a hash, client sent one: removed",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"ratings"), (HASH, b"84b7c6f5d9")],
        draw: CANARY,
        edits: &[(DECISION, Some("canary")), (HASH, None)],
        decision: Some(Subset::Canary),
    },
    Case {
        what: "subset without a hash, none sent: nothing for the hash",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"ratings")],
        draw: STABLE,
        edits: &[],
        decision: Some(Subset::Stable),
    },
    Case {
        what: "other host, nothing sent: no edits (no host call)",
        write_stable: true,
        hash_header: true,
        headers: &[(":authority", b"details:9080"), ("x-other", b"1")],
        draw: CANARY,
        edits: &[],
        decision: None,
    },
    Case {
        what: "other host, client sent both: both removed",
        write_stable: false,
        hash_header: true,
        headers: &[
            (":authority", b"details"),
            (HASH, b"84b7c6f5d9"),
            (DECISION, b"canary"),
        ],
        draw: CANARY,
        edits: &[(DECISION, None), (HASH, None)],
        decision: None,
    },
    Case {
        what: "other host, client sent a hash only: removed",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"details"), (HASH, b"84b7c6f5d9")],
        draw: CANARY,
        edits: &[(HASH, None)],
        decision: None,
    },
    Case {
        what: "other host, no hashHeader configured: a header of that name is not ours",
        write_stable: false,
        hash_header: false,
        headers: &[(":authority", b"details"), (HASH, b"84b7c6f5d9")],
        draw: CANARY,
        edits: &[],
        decision: None,
    },
    Case {
        what: "other host, decision value not UTF-8: removed",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"details"), (DECISION, b"\xfe\xff")],
        draw: CANARY,
        edits: &[(DECISION, None)],
        decision: None,
    },
    Case {
        what: "no :authority: not covered, client decision removed",
        write_stable: false,
        hash_header: true,
        headers: &[(DECISION, b"canary")],
        draw: CANARY,
        edits: &[(DECISION, None)],
        decision: None,
    },
    Case {
        what: "an :authority that is not UTF-8 is no covered host",
        write_stable: false,
        hash_header: true,
        headers: &[(":authority", b"rev\xffiews"), (DECISION, b"canary")],
        draw: CANARY,
        edits: &[(DECISION, None)],
        decision: None,
    },
];

#[test]
fn client_mode_edits_follow_the_table() {
    for case in CASES {
        let config = config(case.write_stable, case.hash_header);
        let buf = serialize(case.headers);
        let headers = SerializedHeaders::parse(&buf).unwrap();
        let routing = route_client_request(&config, Some(headers), || case.draw);
        let expected: Vec<HeaderEdit<'_>> = case
            .edits
            .iter()
            .map(|(name, value)| match value {
                Some(v) => set(name, v),
                None => remove(name),
            })
            .collect();
        assert_eq!(
            routing.edits.iter().collect::<Vec<_>>(),
            expected,
            "{}",
            case.what
        );
        assert_eq!(
            routing.edits.is_empty(),
            expected.is_empty(),
            "{}",
            case.what
        );
        assert_eq!(
            routing.decision.map(|d| d.subset),
            case.decision,
            "{}",
            case.what
        );
    }
}

#[test]
fn a_covered_request_is_decided_and_counted_under_its_service() {
    let config = config(false, true);
    let buf = serialize(&[(":authority", b"ratings"), ("x-user", b"u")]);
    let routing = route_client_request(&config, SerializedHeaders::parse(&buf), || CANARY);
    let decision = routing.decision.unwrap();
    assert_eq!(
        (decision.service, decision.subset, decision.reason),
        (1, Subset::Canary, Reason::Weight)
    );
}

#[test]
fn an_unreadable_header_map_decides_nothing_and_removes_every_header_the_filter_owns() {
    let config = config(true, true);
    let routing = route_client_request(&config, None, || CANARY);
    assert_eq!(routing.decision, None, "the default route (stable) applies");
    assert_eq!(
        routing.edits.iter().collect::<Vec<_>>(),
        [remove(DECISION), remove(HASH)]
    );
}

#[test]
fn the_draw_is_taken_only_for_a_covered_host() {
    let config = config(false, true);
    let buf = serialize(&[(":authority", b"details")]);
    let mut drawn = 0;
    route_client_request(&config, SerializedHeaders::parse(&buf), || {
        drawn += 1;
        CANARY
    });
    assert_eq!(drawn, 0, "an uncovered request costs no draw");
    let buf = serialize(&[(":authority", b"reviews")]);
    route_client_request(&config, SerializedHeaders::parse(&buf), || {
        drawn += 1;
        CANARY
    });
    assert_eq!(drawn, 1);
}

#[test]
fn the_version_tag_is_the_pod_template_hash_label_when_it_is_a_label_value() {
    let long_ok = "a".repeat(63);
    let too_long = "a".repeat(64);
    let cases: [(Option<&[u8]>, Result<&str, VersionTagError>); 11] = [
        (Some(b"6c9f8d5b7d"), Ok("6c9f8d5b7d")),
        (Some(b"v1.2_rc-3"), Ok("v1.2_rc-3")),
        (Some(long_ok.as_bytes()), Ok(long_ok.as_str())),
        // Without the label (or with an empty one) nothing is tagged.
        (None, Err(VersionTagError::Missing)),
        (Some(b""), Err(VersionTagError::Missing)),
        // Not a label value, so never written into a header: a CR LF would split the header
        // block, a NUL truncates it, spaces and other bytes are not what Kubernetes allows.
        (
            Some(b"abc\r\nx-injected: 1"),
            Err(VersionTagError::Invalid("abc\r\nx-injected: 1".into())),
        ),
        (
            Some(b"abc\0"),
            Err(VersionTagError::Invalid("abc\0".into())),
        ),
        (
            Some(b"two words"),
            Err(VersionTagError::Invalid("two words".into())),
        ),
        (
            Some(b"\xff\xfe"),
            Err(VersionTagError::Invalid("\u{fffd}\u{fffd}".into())),
        ),
        (
            Some(too_long.as_bytes()),
            Err(VersionTagError::Invalid(too_long.clone())),
        ),
        (
            Some(b"caf\xc3\xa9"),
            Err(VersionTagError::Invalid("café".into())),
        ),
    ];
    for (label, expected) in cases {
        assert_eq!(version_tag(label), expected, "{label:?}");
    }
    assert!(VersionTagError::Missing
        .to_string()
        .contains("rollouts-pod-template-hash"));
}

#[test]
fn server_mode_sets_the_version_header_to_the_tag_and_removes_it_without_one() {
    let config =
        CompiledConfig::from_json(br#"{"mode":"server","versionHeader":"X-Served-By-Hash"}"#)
            .unwrap();
    assert_eq!(
        server_edits(&config, Some("6c9f8d5b7d"))
            .iter()
            .collect::<Vec<_>>(),
        [set("x-served-by-hash", "6c9f8d5b7d")]
    );
    assert_eq!(
        server_edits(&config, None).iter().collect::<Vec<_>>(),
        [remove("x-served-by-hash")],
        "no label: no tag, and no forged one either"
    );
}

/// Two services of one composed config, each routed by its own VirtualService on its own
/// header: `reviews` on the config's default header, `ratings` on `x-ratings-subset`.
fn two_headers() -> CompiledConfig {
    let json = serde_json::json!({
        "services": {
            "bookinfo/reviews": {"hosts": ["reviews"], "canaryWeight": 5000},
            "bookinfo/ratings": {"hosts": ["ratings"], "canaryWeight": 5000,
                                 "decisionHeader": "X-Ratings-Subset"}
        }
    });
    CompiledConfig::from_json(json.to_string().as_bytes()).unwrap()
}

#[test]
fn a_service_with_its_own_decision_header_is_decided_into_that_header() {
    let config = two_headers();
    let buf = serialize(&[(":authority", b"ratings")]);
    let routing = route_client_request(&config, SerializedHeaders::parse(&buf), || CANARY);
    assert_eq!(
        routing.edits.iter().collect::<Vec<_>>(),
        [set("x-ratings-subset", "canary")]
    );
    let buf = serialize(&[(":authority", b"reviews")]);
    let routing = route_client_request(&config, SerializedHeaders::parse(&buf), || CANARY);
    assert_eq!(
        routing.edits.iter().collect::<Vec<_>>(),
        [set(DECISION, "canary")]
    );
}

#[test]
fn every_decision_header_a_client_sends_is_removed_or_overwritten_whatever_the_host() {
    let config = two_headers();
    let forged: &[(&str, &[u8])] = &[(DECISION, b"canary"), ("x-ratings-subset", b"canary")];
    for (host, expected) in [
        (
            &b"ratings"[..],
            vec![remove(DECISION), set("x-ratings-subset", "stable")],
        ),
        (
            &b"reviews"[..],
            vec![remove("x-ratings-subset"), set(DECISION, "stable")],
        ),
        (
            &b"details"[..],
            vec![remove(DECISION), remove("x-ratings-subset")],
        ),
    ] {
        let mut headers = vec![(":authority", host)];
        headers.extend_from_slice(forged);
        let buf = serialize(&headers);
        let routing = route_client_request(&config, SerializedHeaders::parse(&buf), || STABLE);
        assert_eq!(
            routing.edits.iter().collect::<Vec<_>>(),
            expected,
            "{}",
            String::from_utf8_lossy(host)
        );
    }
    let routing = route_client_request(&config, None, || STABLE);
    assert_eq!(
        routing.edits.iter().collect::<Vec<_>>(),
        [remove(DECISION), remove("x-ratings-subset")],
        "an unreadable header map: every decision header is treated as client-sent"
    );
}
