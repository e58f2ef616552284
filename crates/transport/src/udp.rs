//! UDP socket plumbing shared by the peer's path-switching socket and the relay's socket:
//! binding, address normalisation, and quinn's write-readiness poller.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Maps an IPv4-mapped IPv6 address to plain IPv4, so lookups see one form.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// `a` in the family of a socket (`v6`: a dual-stack IPv6 socket wants IPv4-mapped form).
pub fn in_family(v6: bool, a: SocketAddr) -> SocketAddr {
    match (v6, a) {
        (true, SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => a,
    }
}

/// Binds a non-blocking UDP socket with `buffer` bytes of kernel buffers. `[::]` is made
/// dual-stack, falling back to `0.0.0.0` when IPv6 is unavailable.
pub fn bind(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    bind_with(addr, buffer, false)
}

/// `n` sockets bound to one address with `SO_REUSEPORT` (the kernel spreads the incoming
/// flows over them by their addresses), as [`bind`] binds one.
///
/// `SO_REUSEPORT` alone would let a second process of the same user share a port in use (a
/// relay started twice by mistake), and binding port 0 with it may even pick such a port.
/// So the address is first bound without it: that fails when anything uses the port, and
/// picks a free one for port 0; the shared sockets then take that port.
pub fn bind_shared(
    addr: SocketAddr,
    buffer: usize,
    n: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    let free = bind_with(addr, buffer, false)?.local_addr()?;
    let mut all = vec![bind_with(free, buffer, true)?];
    // The first one took the family `bind` chose (dual stack, or IPv4 without IPv6).
    let at = all[0].local_addr()?;
    for _ in 1..n.max(1) {
        all.push(bind_with(at, buffer, true)?);
    }
    Ok(all)
}

fn bind_with(addr: SocketAddr, buffer: usize, shared: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let try_bind = |addr: SocketAddr| -> io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        if shared {
            s.set_reuse_port(true)?;
        }
        // Loss at default buffer sizes was measured on loopback (shared/notes/crates.md);
        // the kernel caps these at net.core.{r,w}mem_max.
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    match try_bind(addr) {
        // IPv6 disabled on this host: IPv4 only.
        Err(_) if addr.is_ipv6() && addr.ip().is_unspecified() => try_bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            addr.port(),
        )),
        r => r,
    }
}

/// Moves received entry `from` down to index `to` (< `from`), so the entries a socket
/// wrapper keeps for quinn end up contiguous at the front of the batch.
pub fn move_entry(
    bufs: &mut [std::io::IoSliceMut<'_>],
    meta: &mut [quinn::udp::RecvMeta],
    from: usize,
    to: usize,
) {
    if from == to {
        return;
    }
    let (head, tail) = bufs.split_at_mut(from);
    let l = meta[from].len;
    head[to][..l].copy_from_slice(&tail[0][..l]);
    meta[to] = meta[from];
}

/// A socket type that owns a tokio UDP socket.
pub trait TokioUdp: Send + Sync + 'static {
    /// The socket quinn's writes go to.
    fn tokio_udp(&self) -> &tokio::net::UdpSocket;
}

type WritableFut = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// quinn's write-readiness poller for any [`TokioUdp`] socket.
pub struct WritablePoller<S> {
    socket: Arc<S>,
    fut: Option<WritableFut>,
}

impl<S> std::fmt::Debug for WritablePoller<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WritablePoller")
    }
}

/// The poller to return from `AsyncUdpSocket::create_io_poller`.
pub fn writable_poller<S: TokioUdp>(socket: Arc<S>) -> Pin<Box<dyn quinn::UdpPoller>> {
    Box::pin(WritablePoller { socket, fut: None })
}

impl<S: TokioUdp> quinn::UdpPoller for WritablePoller<S> {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fut.is_none() {
            let s = self.socket.clone();
            self.fut = Some(Box::pin(async move { s.tokio_udp().writable().await }));
        }
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(r)
    }
}

/// Raises this process's soft limit of open files to its hard limit (once; where the system
/// allows it), so that many connections, auxiliary sockets and relay sessions do not run
/// out at the default soft limit of 1,024. Returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sockets_take_only_a_free_port_and_port_0_is_never_shared_with_another_group() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut groups = Vec::new();
        for _ in 0..20 {
            let g = bind_shared(loopback, 1 << 16, 3).unwrap();
            let port = g[0].local_addr().unwrap().port();
            assert!(g.iter().all(|s| s.local_addr().unwrap().port() == port));
            groups.push((port, g));
        }
        let mut ports: Vec<u16> = groups.iter().map(|(p, _)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 20, "every group on a port of its own");
        // A port in use (by a shared group, or by anything) is refused.
        let taken = SocketAddr::from(([127, 0, 0, 1], groups[0].0));
        let e = bind_shared(taken, 1 << 16, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = bind(loopback, 1 << 16).unwrap();
        let e = bind_shared(plain.local_addr().unwrap(), 1 << 16, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
