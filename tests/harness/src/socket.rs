//! Socket options of this process's own PostgreSQL connections, read from the kernel.
//!
//! sqlx keeps its sockets private, so a test cannot ask a connection for its `TCP_NODELAY` flag.
//! The kernel can answer instead: the server tells a session its client port
//! (`inet_client_port()`), `/proc/self/net/tcp` maps that local port to a socket inode,
//! `/proc/self/fd` maps the inode to a descriptor number, and `pidfd_getfd(2)` hands this process
//! a duplicate of that descriptor (the same socket, so the same options) to read the flag from.
//! No `unsafe` is involved: rustix returns the duplicate as an owned descriptor.

use std::io;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Whether `TCP_NODELAY` is on for this process's established TCP connection whose local port is
/// `local_port` (IPv4 or IPv6). Fails when no such socket is open in this process.
pub fn tcp_nodelay_of_local_port(local_port: u16) -> io::Result<bool> {
    let socket = socket_of_local_port(local_port)?;
    Ok(rustix::net::sockopt::tcp_nodelay(&socket)?)
}

/// Turns `TCP_NODELAY` on or off for this process's established TCP connection whose local port
/// is `local_port`: the benchmark's `--nagle` uses it to show that its guard catches the stall.
pub fn set_tcp_nodelay_of_local_port(local_port: u16, on: bool) -> io::Result<()> {
    let socket = socket_of_local_port(local_port)?;
    Ok(rustix::net::sockopt::set_tcp_nodelay(&socket, on)?)
}

/// A duplicate descriptor of this process's established TCP socket with local port `local_port`.
fn socket_of_local_port(local_port: u16) -> io::Result<rustix::fd::OwnedFd> {
    let inode = established_socket_inode(local_port)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no established TCP socket of this process has local port {local_port}"),
        )
    })?;
    let target = format!("socket:[{inode}]");
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if link.as_os_str() != target.as_str() {
            continue;
        }
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        return Ok(pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())?);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no descriptor of this process refers to {target}"),
    ))
}

/// The inode of the established TCP socket with local port `port`, from `/proc/self/net/tcp` and
/// `tcp6`.
fn established_socket_inode(port: u16) -> io::Result<Option<u64>> {
    const ESTABLISHED: &str = "01";
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && *state == ESTABLISHED {
                return Ok(inode.parse().ok());
            }
        }
    }
    Ok(None)
}

/// The client port the server sees for the session `conn` runs its statements on (a transaction,
/// or a pooled connection). Panics when the session is not over TCP (a Unix socket has no port).
pub async fn session_client_port(conn: &impl ConnectionTrait) -> u16 {
    let row = conn
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT inet_client_port() AS port",
        ))
        .await
        .expect("asking the server for the session's client port")
        .expect("a row");
    let port: Option<i32> = row.try_get("", "port").expect("the port column");
    let port = port.expect("the session is not over TCP: point DATABASE_URL at a TCP address");
    u16::try_from(port).expect("a TCP port")
}

/// Whether `TCP_NODELAY` is on for the socket of the session `conn` runs its statements on.
pub async fn session_tcp_nodelay(conn: &impl ConnectionTrait) -> bool {
    let port = session_client_port(conn).await;
    tcp_nodelay_of_local_port(port)
        .unwrap_or_else(|e| panic!("reading TCP_NODELAY of local port {port}: {e}"))
}
