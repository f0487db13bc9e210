//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Error, Result};

/// Asks the kernel for `N` distinct free ports on 127.0.0.1.
///
/// The listeners are held until all ports are known, so the ports differ; they are
/// released before the servers bind them, so another process may take one in between.
/// Start-up retries with new ports when a server reports its address in use.
pub(crate) fn free_loopback_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0_u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(Error::io("binding 127.0.0.1:0 to find a free port"))?;
        *port = listener
            .local_addr()
            .map_err(Error::io("reading the address of a free port"))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}
