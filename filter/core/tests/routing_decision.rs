//! The routing decision as a user sees it: which version a request reaches, and why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod support;

use canary_core::decision::{cookie_value, decide_for_service};
use canary_core::header_map::{serialize, SerializedHeaders};
use canary_core::{
    authority_host, decide_route, sticky_bucket, CompiledConfig, Draws, Reason, RequestHeaders,
    Subset,
};
use support::{assert_binomial, MapHeaders};

fn config(weight: u32) -> CompiledConfig {
    let json = format!(
        r#"{{"services":[
            {{"name":"bookinfo/reviews",
              "hosts":["reviews","reviews.bookinfo","reviews.bookinfo.svc","reviews.bookinfo.svc.cluster.local"],
              "canaryWeight":{weight},
              "headerRoutes":[
                {{"name":"exact","match":[{{"header":"x-canary","value":{{"exact":"always"}}}}]}},
                {{"name":"prefix","match":[{{"header":"x-team","value":{{"prefix":"qa-"}}}}]}},
                {{"name":"regex","match":[{{"header":"user-agent","value":{{"regex":"Mozilla/5\\.0 .*CanaryBot.*"}}}}]}},
                {{"name":"cookie","match":[{{"cookie":"canary","value":{{"exact":"yes"}}}}]}},
                {{"name":"both","match":[{{"header":"x-a","value":{{"exact":"1"}}}},{{"header":"x-b","value":{{"exact":"2"}}}}]}}
              ],
              "sticky":{{"header":"x-user-id"}}}},
            {{"name":"bookinfo/ratings","hosts":["ratings"],"canaryWeight":{weight},"sticky":{{"cookie":"session"}}}}
        ]}}"#
    );
    CompiledConfig::from_json(json.as_bytes()).unwrap()
}

fn decide(
    config: &CompiledConfig,
    authority: &str,
    headers: &[(&str, &str)],
    draw: u32,
) -> Option<(Subset, Reason)> {
    decide_route(config, Some(authority), &MapHeaders::new(headers), draw)
        .map(|d| (d.subset, d.reason))
}

#[test]
fn every_form_of_the_service_host_is_covered() {
    let c = config(10_000);
    for authority in [
        "reviews",
        "reviews:9080",
        "reviews.bookinfo",
        "reviews.bookinfo.svc",
        "reviews.bookinfo.svc.cluster.local",
        "reviews.bookinfo.svc.cluster.local:9080",
        "REVIEWS.Bookinfo:9080",
        "reviews.bookinfo.svc.cluster.local.",
    ] {
        assert_eq!(
            decide(&c, authority, &[], 0),
            Some((Subset::Canary, Reason::Weight)),
            "{authority}"
        );
    }
}

#[test]
fn other_hosts_and_missing_authority_are_not_under_canary() {
    let c = config(10_000);
    for authority in [
        "details",
        "details:9080",
        "reviews.other",
        "reviewsx",
        "",
        "[::1]:9080",
    ] {
        assert_eq!(decide(&c, authority, &[], 0), None, "{authority}");
    }
    assert_eq!(decide_route(&c, None, &MapHeaders::default(), 0), None);
}

#[test]
fn authority_host_strips_ports_and_keeps_ipv6_brackets() {
    for (authority, host) in [
        ("reviews:9080", "reviews"),
        ("reviews", "reviews"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("host.:443", "host"),
        ("odd:port", "odd:port"),
    ] {
        assert_eq!(authority_host(authority), host);
    }
}

/// (headers, weight, draw) -> expected (subset, reason)
#[test]
fn decision_table() {
    use Reason::*;
    use Subset::*;
    let cases: &[(&[(&str, &str)], u32, u32, (Subset, Reason))] = &[
        // weight alone
        (&[], 0, 0, (Stable, Weight)),
        (&[], 1, 0, (Canary, Weight)),
        (&[], 1, 1, (Stable, Weight)),
        (&[], 50, 49, (Canary, Weight)),
        (&[], 50, 50, (Stable, Weight)),
        (&[], 10_000, 9_999, (Canary, Weight)),
        // header routes win at weight 0
        (&[("x-canary", "always")], 0, 9_999, (Canary, HeaderRoute)),
        (&[("x-canary", "always!")], 0, 9_999, (Stable, Weight)),
        (&[("x-canary", "Always")], 0, 9_999, (Stable, Weight)),
        (
            &[("x-team", "qa-payments")],
            0,
            9_999,
            (Canary, HeaderRoute),
        ),
        (&[("x-team", "dev-qa-")], 0, 9_999, (Stable, Weight)),
        (
            &[("user-agent", "Mozilla/5.0 (X11) CanaryBot/1")],
            0,
            9_999,
            (Canary, HeaderRoute),
        ),
        (
            &[("user-agent", "curl Mozilla/5.0 CanaryBot")],
            0,
            9_999,
            (Stable, Weight),
        ),
        (
            &[("cookie", "a=1; canary=yes; b=2")],
            0,
            9_999,
            (Canary, HeaderRoute),
        ),
        (
            &[("cookie", "canary=\"yes\"")],
            0,
            9_999,
            (Canary, HeaderRoute),
        ),
        (&[("cookie", "notcanary=yes")], 0, 9_999, (Stable, Weight)),
        // all matches of a route must hold
        (
            &[("x-a", "1"), ("x-b", "2")],
            0,
            9_999,
            (Canary, HeaderRoute),
        ),
        (&[("x-a", "1")], 0, 9_999, (Stable, Weight)),
        // a client-sent decision header is not a header route
        (&[("x-canary-subset", "canary")], 0, 9_999, (Stable, Weight)),
        // header route beats the sticky key and the weight
        (
            &[("x-canary", "always"), ("x-user-id", "u1")],
            0,
            0,
            (Canary, HeaderRoute),
        ),
        // an empty sticky key is no key
        (&[("x-user-id", "")], 10_000, 0, (Canary, Weight)),
    ];
    for (headers, weight, draw, expected) in cases {
        let c = config(*weight);
        let got = decide(&c, "reviews", headers, *draw);
        assert_eq!(
            got,
            Some(*expected),
            "headers={headers:?} weight={weight} draw={draw}"
        );
    }
}

#[test]
fn a_sticky_key_decides_by_its_bucket_not_the_draw() {
    let c = config(3_000);
    for user in ["alice", "bob", "carol", "dave"] {
        let expected = if sticky_bucket("bookinfo/reviews", user) < 3_000 {
            Subset::Canary
        } else {
            Subset::Stable
        };
        for draw in [0, 5_000, 9_999] {
            assert_eq!(
                decide(&c, "reviews", &[("x-user-id", user)], draw),
                Some((expected, Reason::Sticky))
            );
        }
    }
}

#[test]
fn a_sticky_cookie_works_like_a_sticky_header() {
    let c = config(5_000);
    let bucket = sticky_bucket("bookinfo/ratings", "s-42");
    let expected = if bucket < 5_000 {
        Subset::Canary
    } else {
        Subset::Stable
    };
    let got = decide(&c, "ratings", &[("cookie", "theme=dark; session=s-42")], 0);
    assert_eq!(got, Some((expected, Reason::Sticky)));
}

/// The values were computed independently with this Python, which a user can run to predict
/// which users a weight sends to canary:
/// `h = FNV-1a-64(service + "\0" + key); z = splitmix64_finalizer(h); bucket = z % 10000`.
#[test]
fn sticky_buckets_match_an_independent_implementation_of_the_documented_hash() {
    let buckets: Vec<u32> = ["", "alice", "bob", "user-12345"]
        .iter()
        .map(|k| sticky_bucket("bookinfo/reviews", k))
        .collect();
    assert_eq!(buckets, vec![8943, 4591, 9129, 4102]);
}

#[test]
fn the_same_user_always_gets_the_same_version_at_a_given_weight() {
    let c = config(2_500);
    for i in 0..2_000 {
        let user = format!("user-{i}");
        let first = decide(&c, "reviews", &[("x-user-id", &user)], i % 10_000);
        for draw in [1, 7_777, 9_998] {
            assert_eq!(
                decide(&c, "reviews", &[("x-user-id", &user)], draw),
                first,
                "{user}"
            );
        }
    }
}

#[test]
fn users_on_canary_stay_on_canary_as_the_weight_grows() {
    let weights = [0, 1, 50, 100, 1_000, 2_000, 3_000, 5_000, 9_999, 10_000];
    let configs: Vec<CompiledConfig> = weights.iter().map(|w| config(*w)).collect();
    for i in 0..5_000 {
        let user = format!("user-{i}");
        let subsets: Vec<Subset> = configs
            .iter()
            .map(|c| decide(c, "reviews", &[("x-user-id", &user)], 0).unwrap().0)
            .collect();
        // Once canary, canary at every higher weight: the sequence is stable* canary*.
        let first_canary = subsets
            .iter()
            .position(|s| *s == Subset::Canary)
            .unwrap_or(subsets.len());
        assert!(
            subsets[first_canary..].iter().all(|s| *s == Subset::Canary),
            "{user} left canary as the weight grew: {subsets:?} at {weights:?}"
        );
        assert_eq!(
            subsets[0],
            Subset::Stable,
            "weight 0 sends no sticky user to canary"
        );
        assert_eq!(
            subsets[weights.len() - 1],
            Subset::Canary,
            "weight 10000 sends everyone"
        );
    }
}

/// Every statistical test below runs over these many seeds (for the draws) or key sets (for
/// sticky buckets), each checked on its own, and then over all of them pooled (more power
/// against a small bias).
const SEEDS: u64 = 24;

/// The statistical checks in this file: per seed, 3 (sticky weights) + 1 (two services) +
/// 3 (draw weights) + 4 (draw thresholds), and the same 11 once more pooled.
const CHECKS: u64 = 11 * (SEEDS + 1);

/// The false-alarm budget of this whole file: a correct implementation fails ANY check here
/// with probability at most 1e-6 (a union bound over `CHECKS` checks, each at
/// `1e-6 / CHECKS`, about 3.6e-9; exact binomial regions).
const FALSE_ALARM_PER_CHECK: f64 = 1e-6 / CHECKS as f64;

/// Asserts each seed's count, then the pooled count, at [`FALSE_ALARM_PER_CHECK`].
fn assert_binomial_per_seed(counts: &[u64], n_per_seed: u64, p: f64, what: &str) {
    for (seed, &count) in counts.iter().enumerate() {
        assert_binomial(
            count,
            n_per_seed,
            p,
            FALSE_ALARM_PER_CHECK,
            &format!("{what}, seed {seed}"),
        );
    }
    assert_binomial(
        counts.iter().sum(),
        n_per_seed * counts.len() as u64,
        p,
        FALSE_ALARM_PER_CHECK,
        &format!("{what}, {} seeds pooled", counts.len()),
    );
}

#[test]
fn sticky_users_split_in_the_configured_proportion() {
    let n = 2_000u64;
    for weight in [50u32, 1_000, 5_000] {
        let c = config(weight);
        let service = &c.services[0];
        let counts: Vec<u64> = (0..SEEDS)
            .map(|seed| {
                (0..n)
                    .filter(|i| {
                        sticky_decision(service, &format!("s{seed}-u{i}")) == Subset::Canary
                    })
                    .count() as u64
            })
            .collect();
        assert_binomial_per_seed(
            &counts,
            n,
            f64::from(weight) / 10_000.0,
            &format!("sticky users at {weight} bp"),
        );
    }
}

/// A request whose only header is the sticky key `x-user-id`, if any: lookups without a map,
/// as these tests make millions.
struct OnlyUserId<'a>(Option<&'a str>);

impl RequestHeaders for OnlyUserId<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.filter(|_| name == "x-user-id")
    }
}

/// The decision for a request carrying sticky key `user`.
fn sticky_decision(service: &canary_core::CompiledService, user: &str) -> Subset {
    let (subset, reason) = decide_for_service(service, &OnlyUserId(Some(user)), 0);
    assert_eq!(reason, Reason::Sticky);
    subset
}

#[test]
fn the_same_user_is_bucketed_independently_per_service() {
    let n = 2_000u64;
    let counts: Vec<u64> = (0..SEEDS)
        .map(|seed| {
            (0..n)
                .filter(|i| {
                    let key = format!("s{seed}-u{i}");
                    (sticky_bucket("bookinfo/reviews", &key) < 5_000)
                        == (sticky_bucket("bookinfo/ratings", &key) < 5_000)
                })
                .count() as u64
        })
        .collect();
    assert_binomial_per_seed(&counts, n, 0.5, "agreement between two services at 50%");
}

#[test]
fn weighted_draws_split_within_binomial_bounds() {
    let n = 20_000u64;
    let no_headers = OnlyUserId(None);
    for weight in [0u32, 1, 50, 2_000, 10_000] {
        let c = config(weight);
        let service = &c.services[0];
        let counts: Vec<u64> = (0..SEEDS)
            .map(|seed| {
                let mut draws = Draws::new(seed);
                (0..n)
                    .filter(|_| {
                        decide_for_service(service, &no_headers, draws.next_point()).0
                            == Subset::Canary
                    })
                    .count() as u64
            })
            .collect();
        match weight {
            0 => assert!(counts.iter().all(|&c| c == 0), "weight 0 sends no one"),
            10_000 => assert!(
                counts.iter().all(|&c| c == n),
                "weight 10000 sends everyone"
            ),
            w => assert_binomial_per_seed(
                &counts,
                n,
                f64::from(w) / 10_000.0,
                &format!("draws at {w} bp"),
            ),
        }
    }
}

#[test]
fn draws_cover_every_point_uniformly() {
    let n = 100_000u64;
    let thresholds = [1u32, 100, 5_000, 9_999];
    let mut below = vec![[0u64; 4]; SEEDS as usize];
    for (seed, below) in below.iter_mut().enumerate() {
        let mut draws = Draws::new(0xd1ce_0000 + seed as u64);
        for _ in 0..n {
            let p = draws.next_point();
            assert!(p < 10_000);
            for (k, t) in thresholds.iter().enumerate() {
                if p < *t {
                    below[k] += 1;
                }
            }
        }
    }
    for (k, t) in thresholds.iter().enumerate() {
        let counts: Vec<u64> = below.iter().map(|b| b[k]).collect();
        assert_binomial_per_seed(
            &counts,
            n,
            f64::from(*t) / 10_000.0,
            &format!("P(draw < {t})"),
        );
    }
}

#[test]
fn headers_not_needed_for_the_decision_are_not_read() {
    let c = CompiledConfig::from_json(
        br#"{"services":[{"name":"a/b","hosts":["b"],"canaryWeight":10}]}"#,
    )
    .unwrap();
    let headers = MapHeaders::new(&[("x-user-id", "u")]);
    decide_for_service(&c.services[0], &headers, 0);
    assert!(
        headers.asked.borrow().is_empty(),
        "asked for {:?}",
        headers.asked
    );

    let c = config(10);
    let headers = MapHeaders::new(&[("x-canary", "always")]);
    decide_for_service(&c.services[0], &headers, 0);
    assert_eq!(
        *headers.asked.borrow(),
        vec!["x-canary"],
        "the first matching route ends the search"
    );
}

#[test]
fn cookie_routes_and_a_sticky_cookie_read_only_the_cookie_header() {
    let c = CompiledConfig::from_json(
        br#"{"services":[{"name":"a/b","hosts":["b"],
            "headerRoutes":[{"name":"r1","match":[{"cookie":"x","value":{"exact":"1"}}]},
                            {"name":"r2","match":[{"cookie":"y","value":{"exact":"1"}}]}],
            "sticky":{"cookie":"session"}}]}"#,
    )
    .unwrap();
    let headers = MapHeaders::new(&[("cookie", "session=abc")]);
    let (_, reason) = decide_for_service(&c.services[0], &headers, 0);
    assert_eq!(reason, Reason::Sticky);
    assert!(
        headers.asked.borrow().iter().all(|h| h == "cookie"),
        "{:?}",
        headers.asked
    );
}

#[test]
fn cookie_values_are_found_among_many() {
    assert_eq!(cookie_value("a=1; b=2;c=3", "c"), Some("3"));
    assert_eq!(cookie_value("a=1; b=2", "b"), Some("2"));
    assert_eq!(cookie_value("ab=1", "a"), None);
    assert_eq!(cookie_value("a", "a"), None);
    assert_eq!(cookie_value("a=", "a"), Some(""));
    assert_eq!(cookie_value("a=x=y", "a"), Some("x=y"));
}

/// The byte-level cookie parser against the obvious `split`/`trim` one, on every string up to
/// length 6 over the characters that matter (separators, quotes, spaces, tabs, two name letters).
#[test]
fn cookie_parsing_agrees_with_a_split_and_trim_reference() {
    fn reference<'a>(header: &'a str, name: &str) -> Option<&'a str> {
        header.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            if k.trim_ascii() != name {
                return None;
            }
            let v = v.trim_ascii();
            Some(
                v.strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(v),
            )
        })
    }
    const ALPHABET: [char; 7] = ['a', 'b', '=', ';', ' ', '"', '\t'];
    let mut checked = 0;
    for len in 0..=6u32 {
        for mut code in 0..7usize.pow(len) {
            let mut s = String::new();
            for _ in 0..len {
                s.push(ALPHABET[code % 7]);
                code /= 7;
            }
            for name in ["a", "ab", ""] {
                assert_eq!(
                    cookie_value(&s, name),
                    reference(&s, name),
                    "cookie {name:?} in {s:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 300_000);
}

/// The decision for a request whose header map is `pairs`, read as the filter reads Envoy's.
fn decide_serialized(
    c: &CompiledConfig,
    service: usize,
    pairs: &[(&str, &[u8])],
    draw: u32,
) -> (Subset, Reason) {
    let buf = serialize(pairs);
    let headers = SerializedHeaders::parse(&buf).unwrap();
    decide_for_service(c.services.get(service).unwrap(), &headers, draw)
}

fn expected_sticky(bucket: u32, weight: u32) -> (Subset, Reason) {
    let subset = if bucket < weight {
        Subset::Canary
    } else {
        Subset::Stable
    };
    (subset, Reason::Sticky)
}

/// Over HTTP/1.1 a client may send several `Cookie` lines, and Envoy passes them on as separate
/// headers: a sticky cookie in a later line must still decide, or the user is redrawn on every
/// request.
#[test]
fn a_sticky_cookie_in_a_later_cookie_line_decides() {
    let c = config(5_000);
    let want = expected_sticky(sticky_bucket("bookinfo/ratings", "s-42"), 5_000);
    for draw in [0, 9_999] {
        let got = decide_serialized(
            &c,
            1,
            &[
                (":authority", b"ratings"),
                ("cookie", b"theme=dark; lang=en"),
                ("cookie", b"session=s-42"),
            ],
            draw,
        );
        assert_eq!(got, want, "draw={draw}");
    }
    // The first occurrence wins, across lines as within one (as for HTTP/2's joined crumbs).
    let first = expected_sticky(sticky_bucket("bookinfo/ratings", "s-1"), 5_000);
    let second = expected_sticky(sticky_bucket("bookinfo/ratings", "s-42"), 5_000);
    assert_ne!(first, second, "pick keys in different halves");
    let got = decide_serialized(
        &c,
        1,
        &[("cookie", b"session=s-1"), ("cookie", b"session=s-42")],
        0,
    );
    assert_eq!(got, first);
}

#[test]
fn a_header_route_cookie_in_a_later_cookie_line_forces_canary() {
    let c = config(0);
    let got = decide_serialized(
        &c,
        0,
        &[
            (":authority", b"reviews"),
            ("cookie", b"theme=dark"),
            ("cookie", b"a=1; canary=yes"),
        ],
        9_999,
    );
    assert_eq!(got, (Subset::Canary, Reason::HeaderRoute));
}
/// The documented bucket computed over raw bytes, independently of the filter's code.
fn reference_bucket(service: &str, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in service.as_bytes().iter().chain(&[0u8]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (canary_core::decision::mix64(h) % 10_000) as u32
}

/// The sticky key's bytes decide, as text would: a key that is not UTF-8 is still a key, and a
/// stray byte in some other cookie does not hide the sticky one.
#[test]
fn a_sticky_key_that_is_not_utf8_still_decides_by_its_bytes() {
    let c = config(5_000);
    // Another cookie's bad byte, in the same line or another one.
    let want = expected_sticky(sticky_bucket("bookinfo/ratings", "s-42"), 5_000);
    for pairs in [
        &[("cookie", &b"theme=\xff\xfe; session=s-42"[..])][..],
        &[
            ("cookie", &b"theme=\xff"[..]),
            ("cookie", &b"session=s-42"[..]),
        ][..],
    ] {
        for draw in [0, 9_999] {
            assert_eq!(decide_serialized(&c, 1, pairs, draw), want, "{pairs:?}");
        }
    }
    // The sticky cookie's own value, and the sticky header's.
    for (service, name, header, key) in [
        (1, "bookinfo/ratings", "cookie", &b"session=caf\xe9"[..]),
        (0, "bookinfo/reviews", "x-user-id", &b"caf\xe9"[..]),
        (0, "bookinfo/reviews", "x-user-id", &b"\xff\xfe\xfd"[..]),
    ] {
        let raw_key = key.strip_prefix(b"session=").unwrap_or(key);
        let want = expected_sticky(reference_bucket(name, raw_key), 5_000);
        for draw in [0, 9_999] {
            let got = decide_serialized(&c, service, &[(header, key)], draw);
            assert_eq!(got, want, "{header}: {key:?} draw={draw}");
        }
    }
    // UTF-8 keys keep their buckets.
    for key in ["", "alice", "bob", "user-12345", "café"] {
        assert_eq!(
            sticky_bucket("bookinfo/reviews", key),
            reference_bucket("bookinfo/reviews", key.as_bytes())
        );
    }
}
