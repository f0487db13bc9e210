//! Who may use the dashboard: the checks on every request (`Host`) and on every action
//! (`--read-only`, `Origin`, the per-run token). Pure: header values in, a refusal out.
//!
//! - `Host` must name the address the dashboard is bound to, or `localhost` on a loopback or
//!   unspecified bind, with the bound port. A DNS-rebinding page reaches the dashboard under
//!   its own domain name, so the `Host` it sends is refused: it can read nothing, act on
//!   nothing. Bound to an unspecified address (`0.0.0.0`, `::`), any IP literal is accepted
//!   (the user chose to share it; rebinding needs a name, never an IP literal).
//! - `Origin` must be the dashboard's own (`http://` + the request's `Host`): a page of
//!   another site can send a POST (a form, `fetch` in `no-cors` mode) but not with this
//!   `Origin`. A missing or `null` `Origin` is refused too: browsers send it on every POST.
//! - The token is random per run and only in the page the dashboard serves, which another
//!   origin cannot read.

use std::net::{IpAddr, SocketAddr};

/// The header that carries the token on an action.
pub const TOKEN_HEADER: &str = "x-dashboard-token";

/// Why a request was refused (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host` header.
    MissingHost,
    /// A `Host` that is not this dashboard's address.
    ForeignHost {
        /// The `Host` sent.
        host: String,
        /// What this dashboard answers to.
        expected: String,
    },
    /// The dashboard runs with `--read-only`.
    ReadOnly,
    /// An action without an `Origin` header (or `Origin: null`).
    MissingOrigin,
    /// An action from another origin.
    ForeignOrigin {
        /// The `Origin` sent.
        origin: String,
        /// This dashboard's origin.
        expected: String,
    },
    /// An action without the token.
    MissingToken,
    /// An action with another token (an older run's page, say).
    WrongToken,
}

impl Refusal {
    /// The sentence the refused client reads.
    pub fn message(&self) -> String {
        match self {
            Self::MissingHost => "refused: the request has no Host header".into(),
            Self::ForeignHost { host, expected } => format!(
                "refused: Host {host:?} is not this dashboard's address ({expected}); open the dashboard at that address \
                 (requests under another name are refused: DNS rebinding)"
            ),
            Self::ReadOnly => {
                "refused: this dashboard runs with --read-only; restart it without the flag to act on rollouts".into()
            }
            Self::MissingOrigin => {
                "refused: an action needs an Origin header; actions are accepted only from the dashboard's own page".into()
            }
            Self::ForeignOrigin { origin, expected } => format!(
                "refused: Origin {origin:?} is not this dashboard ({expected}); actions are accepted only from the dashboard's own page (cross-site request)"
            ),
            Self::MissingToken => format!(
                "refused: the action carries no dashboard token (header {TOKEN_HEADER}); reload the dashboard page and try again"
            ),
            Self::WrongToken => {
                "refused: the dashboard token does not match this run (a page from an earlier run?); reload the dashboard page and try again".into()
            }
        }
    }
}

/// The checks of one dashboard run.
#[derive(Debug, Clone)]
pub struct Guard {
    bound: SocketAddr,
    token: String,
    read_only: bool,
}

impl Guard {
    /// The checks for a dashboard bound to `bound` whose page carries `token`.
    pub fn new(bound: SocketAddr, token: String, read_only: bool) -> Guard {
        Guard {
            bound,
            token,
            read_only,
        }
    }

    /// Whether actions are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The token the served page carries.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Every request: its `Host` must be this dashboard's address.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), Refusal> {
        let host = host.ok_or(Refusal::MissingHost)?;
        if self.host_is_ours(host) {
            Ok(())
        } else {
            Err(Refusal::ForeignHost {
                host: host.to_owned(),
                expected: self.expected_hosts(),
            })
        }
    }

    /// Every action: not read-only, same `Origin` as the (already checked) `host`, and the
    /// token of this run.
    pub fn check_action(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        self.check_host(host)?;
        if self.read_only {
            return Err(Refusal::ReadOnly);
        }
        let expected = format!("http://{}", host.unwrap_or_default());
        match origin {
            None | Some("null") => return Err(Refusal::MissingOrigin),
            Some(o) if !o.eq_ignore_ascii_case(&expected) => {
                return Err(Refusal::ForeignOrigin {
                    origin: o.to_owned(),
                    expected,
                })
            }
            Some(_) => {}
        }
        match token {
            None | Some("") => Err(Refusal::MissingToken),
            Some(t) if same_secret(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::WrongToken),
        }
    }

    fn host_is_ours(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port != self.bound.port() {
            return false;
        }
        let ip = self.bound.ip();
        if name.eq_ignore_ascii_case("localhost") {
            return ip.is_loopback() || ip.is_unspecified();
        }
        match name.parse::<IpAddr>() {
            Ok(_) if ip.is_unspecified() => true,
            Ok(sent) => sent == ip,
            Err(_) => false,
        }
    }

    fn expected_hosts(&self) -> String {
        let ip = self.bound.ip();
        let port = self.bound.port();
        let literal = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if ip.is_unspecified() {
            format!("an IP address or localhost, port {port}")
        } else if ip.is_loopback() {
            format!("{literal}:{port} or localhost:{port}")
        } else {
            format!("{literal}:{port}")
        }
    }
}

/// `host[:port]` (IPv6 in brackets) into the name and the port, 80 when absent (http).
fn split_host(host: &str) -> Option<(&str, u16)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            Some(_) => return None,
            None => (host, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    let port = match port {
        None => 80,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((name, port))
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new per-run token: 32 random bytes from the operating system, as hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "4f1c";

    fn guard(bound: &str) -> Guard {
        Guard::new(bound.parse().unwrap(), TOKEN.into(), false)
    }

    #[test]
    fn hosts_naming_the_bound_address_or_localhost_are_accepted_and_others_refused() {
        // (bound address, Host header, accepted)
        let table: &[(&str, Option<&str>, bool)] = &[
            ("127.0.0.1:3100", Some("127.0.0.1:3100"), true),
            ("127.0.0.1:3100", Some("localhost:3100"), true),
            ("127.0.0.1:3100", Some("LOCALHOST:3100"), true),
            ("127.0.0.1:3100", Some("127.0.0.1:3101"), false),
            ("127.0.0.1:3100", Some("127.0.0.1"), false),
            ("127.0.0.1:3100", Some("localhost"), false),
            ("127.0.0.1:3100", Some("evil.example:3100"), false),
            ("127.0.0.1:3100", Some("127.0.0.1.nip.io:3100"), false),
            ("127.0.0.1:3100", Some("localhost.:3100"), false),
            ("127.0.0.1:3100", Some("127.0.0.2:3100"), false),
            ("127.0.0.1:3100", Some("127.0.0.1:3100:3100"), false),
            ("127.0.0.1:3100", Some("127.0.0.1:"), false),
            ("127.0.0.1:3100", Some("127.0.0.1:+3100"), false),
            ("127.0.0.1:3100", Some(":3100"), false),
            ("127.0.0.1:3100", Some(""), false),
            ("127.0.0.1:3100", None, false),
            ("127.0.0.1:80", Some("127.0.0.1"), true),
            ("127.0.0.1:80", Some("localhost"), true),
            ("[::1]:3100", Some("[::1]:3100"), true),
            ("[::1]:3100", Some("localhost:3100"), true),
            ("[::1]:3100", Some("[::2]:3100"), false),
            ("[::1]:3100", Some("::1:3100"), false),
            ("10.1.2.3:3100", Some("10.1.2.3:3100"), true),
            ("10.1.2.3:3100", Some("localhost:3100"), false),
            ("10.1.2.3:3100", Some("dashboard.corp:3100"), false),
            ("0.0.0.0:3100", Some("192.168.1.20:3100"), true),
            ("0.0.0.0:3100", Some("localhost:3100"), true),
            ("0.0.0.0:3100", Some("[fe80::1]:3100"), true),
            ("0.0.0.0:3100", Some("attacker.example:3100"), false),
            ("[::]:3100", Some("[fe80::1]:3100"), true),
            ("[::]:3100", Some("192.168.1.20:3100"), true),
            ("[::]:3100", Some("192.168.1.20:80"), false),
        ];
        for (bound, host, accepted) in table {
            let result = guard(bound).check_host(*host);
            assert_eq!(
                result.is_ok(),
                *accepted,
                "bound {bound}, Host {host:?}: {result:?}"
            );
        }
    }

    #[test]
    fn actions_need_the_same_origin_and_this_runs_token() {
        let host = Some("127.0.0.1:3100");
        let own = Some("http://127.0.0.1:3100");
        // (Origin, token, outcome: the refusal's variant)
        type Row<'a> = (Option<&'a str>, Option<&'a str>, Result<(), &'a str>);
        let table: &[Row] = &[
            (own, Some(TOKEN), Ok(())),
            (Some("HTTP://127.0.0.1:3100"), Some(TOKEN), Ok(())),
            (own, None, Err("MissingToken")),
            (own, Some(""), Err("MissingToken")),
            (own, Some("4f1d"), Err("WrongToken")),
            (own, Some("4f1c0"), Err("WrongToken")),
            (None, Some(TOKEN), Err("MissingOrigin")),
            (Some("null"), Some(TOKEN), Err("MissingOrigin")),
            (
                Some("http://evil.example"),
                Some(TOKEN),
                Err("ForeignOrigin"),
            ),
            (
                Some("http://localhost:3100"),
                Some(TOKEN),
                Err("ForeignOrigin"),
            ),
            (
                Some("https://127.0.0.1:3100"),
                Some(TOKEN),
                Err("ForeignOrigin"),
            ),
            (
                Some("http://127.0.0.1:3101"),
                Some(TOKEN),
                Err("ForeignOrigin"),
            ),
            (Some("http://evil.example"), None, Err("ForeignOrigin")),
        ];
        for (origin, token, outcome) in table {
            let result = guard("127.0.0.1:3100").check_action(host, *origin, *token);
            let kind = result.map_err(|r| {
                format!("{r:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            });
            assert_eq!(
                kind,
                outcome.map_err(str::to_owned),
                "Origin {origin:?}, token {token:?}"
            );
        }
    }

    #[test]
    fn an_action_under_a_foreign_host_is_refused_before_anything_else() {
        let refusal = guard("127.0.0.1:3100")
            .check_action(
                Some("evil.example:3100"),
                Some("http://evil.example:3100"),
                Some(TOKEN),
            )
            .unwrap_err();
        assert!(
            matches!(refusal, Refusal::ForeignHost { .. }),
            "{refusal:?}"
        );
        assert!(refusal.message().contains("DNS rebinding"));
    }

    #[test]
    fn a_read_only_dashboard_refuses_every_action_even_with_the_token() {
        let read_only = Guard::new("127.0.0.1:3100".parse().unwrap(), TOKEN.into(), true);
        let refusal = read_only
            .check_action(
                Some("127.0.0.1:3100"),
                Some("http://127.0.0.1:3100"),
                Some(TOKEN),
            )
            .unwrap_err();
        assert_eq!(refusal, Refusal::ReadOnly);
        assert!(refusal.message().contains("--read-only"));
    }

    #[test]
    fn every_refusal_says_what_was_wrong() {
        let host = Refusal::ForeignHost {
            host: "evil.example:3100".into(),
            expected: "127.0.0.1:3100 or localhost:3100".into(),
        };
        assert!(host.message().contains("\"evil.example:3100\""));
        assert!(host.message().contains("127.0.0.1:3100 or localhost:3100"));
        let origin = Refusal::ForeignOrigin {
            origin: "http://evil.example".into(),
            expected: "http://127.0.0.1:3100".into(),
        };
        assert!(origin.message().contains("cross-site"));
        assert!(Refusal::MissingToken.message().contains(TOKEN_HEADER));
        assert!(Refusal::WrongToken.message().contains("reload"));
    }

    #[test]
    fn tokens_are_64_hex_digits_and_differ_per_run() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
