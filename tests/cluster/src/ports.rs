//! Free loopback ports for servers a test starts as child processes.
//!
//! A port is picked, released, and bound by the child a moment later (istiod binds about two
//! seconds after start, once its informers have synced). A port the kernel hands out for
//! `bind(0)` is in the ephemeral range, the same range it picks source ports of outgoing
//! connections from: any connection opened on the machine in between (tests run in parallel)
//! may take it, and the child fails with "address already in use". So ports are picked below
//! the ephemeral range, where the kernel never allocates on its own; only another test picking
//! the same random port in the same moment could collide, and start-up retries cover that.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Error, Result};

/// Lowest port picked: above the well-known and most registered service ports.
const LOWEST: u16 = 15_000;
/// Random tries before falling back to a kernel-picked port.
const TRIES: usize = 200;

/// `N` distinct ports free on 127.0.0.1 now, below the kernel's ephemeral range when there is
/// room there (else kernel-picked). The listeners are held until all ports are known, so the
/// ports differ; they are released before return.
pub fn free_loopback_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let below = ephemeral_low().filter(|low| *low > LOWEST + 1_000);
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0_u16; N];
    for port in &mut ports {
        let listener = match below {
            Some(high) => bind_random_below(high)?,
            None => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        };
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// One free port on 127.0.0.1, as [`free_loopback_ports`] picks them.
pub fn free_loopback_port() -> std::io::Result<u16> {
    free_loopback_ports::<1>().map(|[port]| port)
}

/// [`free_loopback_ports`] with this crate's error.
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    free_loopback_ports::<N>().map_err(Error::io("binding 127.0.0.1 to find a free port"))
}

fn bind_random_below(high: u16) -> std::io::Result<TcpListener> {
    let span = u64::from(high - LOWEST);
    let state = std::collections::hash_map::RandomState::new();
    for attempt in 0..TRIES {
        let mut hasher = state.build_hasher();
        hasher.write_usize(attempt);
        let offset = u16::try_from(hasher.finish() % span).unwrap_or(0);
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, LOWEST + offset)) {
            return Ok(listener);
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
}

/// The first port of `net.ipv4.ip_local_port_range` (Linux).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports = free_loopback_ports::<8>().unwrap();
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{ports:?}");
        if let Some(low) = ephemeral_low().filter(|low| *low > LOWEST + 1_000) {
            assert!(
                ports.iter().all(|p| (LOWEST..low).contains(p)),
                "{ports:?} vs {low}"
            );
        }
        for port in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
