//! The filter's own work per request, without Envoy: parse the header buffer the host hands
//! over, find the service by `:authority`, decide. `make bench` runs this natively and, built
//! for `wasm32-wasip1` with the filter's `wasm-release` profile, under Node's V8 (the engine
//! Envoy embeds, with the same optimising tier: Envoy runs V8 with `--no-liftoff`). Inside
//! Envoy these phases are mixed with host calls and scheduling noise; here they are timed alone,
//! to a few nanoseconds.
//!
//! ```text
//! request_path <pluginConfig JSON> '<name>: <value>'...
//! ```
//!
//! Prints one line: `request_path parse_ns=.. lookup_ns=.. decide_ns=.. total_ns=..` (each the
//! fastest of several rounds of many iterations; `total` is the three together plus choosing
//! the header edits, as the filter runs them: `route_client_request`). When the `:authority`
//! is no host of the config, nothing is decided: `decide_ns=0`, and `total` is what the filter
//! does for such a request (parse, find no service, check for client-sent headers to remove).

use std::hint::black_box;
use std::time::Instant;

use canary_core::decision::{decide_for_service, Draws, RequestHeaders};
use canary_core::header_edits::route_client_request;
use canary_core::header_map::{serialize, SerializedHeaders};
use canary_core::CompiledConfig;

const ITERATIONS: u32 = 200_000;
const ROUNDS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: request_path <pluginConfig JSON> '<name>: <value>'...";
    let config_json = args.next().ok_or(usage)?;
    let config = CompiledConfig::from_json(config_json.as_bytes())?;
    // `name: value`, as curl -H takes it (`:authority: reviews` too).
    let pairs: Vec<(String, Vec<u8>)> = args
        .map(|a| match a.split_once(": ") {
            Some((k, v)) => Ok((k.to_ascii_lowercase(), v.as_bytes().to_vec())),
            None => Err(format!("{a:?} is not `name: value`; {usage}")),
        })
        .collect::<Result<_, _>>()?;
    let borrowed: Vec<(&str, &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let buf = serialize(&borrowed);
    let headers = SerializedHeaders::parse(&buf).ok_or("headers did not serialize")?;
    let authority = headers
        .header(":authority")
        .ok_or("no :authority header given")?;
    let service = config.service_for_authority(authority).map(|(_, s)| s);
    let mut draws = Draws::new(0x5eed);

    let time = |f: &mut dyn FnMut() -> u32| -> f64 {
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                let mut sink = 0u32;
                for _ in 0..ITERATIONS {
                    sink = sink.wrapping_add(f());
                }
                black_box(sink);
                start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
            })
            .fold(f64::INFINITY, f64::min)
    };
    let parse =
        time(&mut || SerializedHeaders::parse(black_box(&buf)).map_or(0, |h| h.len() as u32));
    let lookup = time(&mut || {
        black_box(headers)
            .header(":authority")
            .and_then(|a| config.service_for_authority(a))
            .map_or(0, |(i, _)| i as u32)
    });
    let decide = match service {
        Some(service) => time(&mut || {
            let (subset, _) = decide_for_service(service, black_box(&headers), draws.next_point());
            subset as u32
        }),
        None => 0.0,
    };
    // What the filter runs per request: parse, then the client rules (find the service,
    // decide, and the header edits to apply).
    let total = time(&mut || {
        let routing =
            route_client_request(&config, SerializedHeaders::parse(black_box(&buf)), || {
                draws.next_point()
            });
        black_box(routing.edits);
        routing.decision.map_or(0, |d| d.subset as u32)
    });
    println!(
        "request_path parse_ns={parse:.1} lookup_ns={lookup:.1} decide_ns={decide:.1} total_ns={total:.1}"
    );
    Ok(())
}
