//! A TCP proxy between clients and a server that can stop forwarding without
//! closing anything: the half-open connection of a crashed host, or of a NAT
//! or load balancer that dropped the flow. Neither side sees an error; bytes
//! sent are accepted by the proxy's sockets and go nowhere until it thaws.
//!
//! Plain threads, so it keeps forwarding whatever the test's runtime does.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::free_port;

/// How often a copier looks at the proxy's state while nothing arrives.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct State {
    frozen: AtomicBool,
    stopped: AtomicBool,
    /// Bumped by `reset`: copiers of an older generation close their pair.
    generation: AtomicU64,
    /// Both ends of every pair, with the pair's number in accept order, to
    /// close them on `reset`, `cut_from` and drop.
    streams: Mutex<Vec<(u64, TcpStream)>>,
    accepted: AtomicU64,
    /// Set by `cut_from`: new connections are closed at once.
    refusing: AtomicBool,
}

/// A proxy on its own port of `127.0.0.1`, forwarding to one upstream
/// address; stopped (every connection closed) when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free port and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Proxy> {
        let port = free_port()?;
        Proxy::start_on(port, upstream)
    }

    /// Listens on `port` (for a server that must advertise the proxy's
    /// address before the proxy exists, such as Kafka).
    pub fn start_on(port: u16, upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("bind the proxy on 127.0.0.1:{port}"))?;
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept(&listener, upstream, &accepting))
            .context("start the proxy thread")?;
        Ok(Proxy { port, state })
    }

    /// A proxy in front of the server of `url` (`scheme://[user@]host:port[/...]`
    /// on this machine), and `url` with the proxy's port instead.
    pub fn in_front_of(url: &str) -> Result<(Proxy, String)> {
        let (scheme, rest) = url.split_once("://").context("a URL with a scheme")?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, hostport)) => (format!("{user}@"), hostport),
            None => (String::new(), authority),
        };
        let (host, port) = hostport.rsplit_once(':').context("a URL with a port")?;
        let port: u16 = port.parse().with_context(|| format!("port of {url}"))?;
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let proxied = format!("{scheme}://{userinfo}{host}:{}{path}", proxy.port());
        Ok((proxy, proxied))
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding in both directions; every connection stays open.
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::Release);
    }

    /// Forwards again, what was held first.
    pub fn thaw(&self) {
        self.state.frozen.store(false, Ordering::Release);
    }

    /// Whether it is frozen.
    pub fn is_frozen(&self) -> bool {
        self.state.frozen.load(Ordering::Acquire)
    }

    /// Closes every connection (both sides see it) and thaws; new
    /// connections are forwarded.
    pub fn reset(&self) {
        self.state.generation.fetch_add(1, Ordering::AcqRel);
        close_all(&self.state);
        self.thaw();
    }

    /// Connections accepted so far: a mark for [`cut_from`](Proxy::cut_from).
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Acquire)
    }

    /// Cuts a client off: closes every connection accepted since `mark` (an
    /// earlier [`accepted`](Proxy::accepted)), and every new one at once,
    /// until [`restore`](Proxy::restore). Connections made before `mark`
    /// (another client's) keep forwarding.
    pub fn cut_from(&self, mark: u64) {
        self.state.refusing.store(true, Ordering::Release);
        let mut streams = self
            .state
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        streams.retain(|(n, stream)| {
            let cut = *n >= mark;
            if cut {
                let _ = stream.shutdown(Shutdown::Both);
            }
            !cut
        });
    }

    /// Accepts connections again after [`cut_from`](Proxy::cut_from).
    pub fn restore(&self) {
        self.state.refusing.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        close_all(&self.state);
        // Wakes the accept loop, which then sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn close_all(state: &State) {
    let streams =
        std::mem::take(&mut *state.streams.lock().unwrap_or_else(PoisonError::into_inner));
    for (_, stream) in streams {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        if state.refusing.load(Ordering::Acquire) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let number = state.accepted.fetch_add(1, Ordering::AcqRel);
        let generation = state.generation.load(Ordering::Acquire);
        let pair = (|| -> std::io::Result<_> {
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            Ok((
                client.try_clone()?,
                server.try_clone()?,
                client.try_clone()?,
                server.try_clone()?,
            ))
        })();
        let Ok((client_read, server_read, client_keep, server_keep)) = pair else {
            continue;
        };
        state
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([(number, client_keep), (number, server_keep)]);
        for (from, to) in [
            (client_read, server.try_clone()),
            (server_read, client.try_clone()),
        ] {
            let Ok(to) = to else { continue };
            let state = Arc::clone(state);
            let _ = thread::Builder::new()
                .name("proxy-copy".into())
                .spawn(move || copy(from, to, &state, generation));
        }
    }
}

/// Whether the proxy stopped, or was reset past `generation`.
fn ended(state: &State, generation: u64) -> bool {
    state.stopped.load(Ordering::Acquire) || state.generation.load(Ordering::Acquire) != generation
}

/// Copies `from` to `to` while thawed, until either side closes, the proxy
/// is reset past `generation`, or it stops.
fn copy(mut from: TcpStream, mut to: TcpStream, state: &State, generation: u64) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if ended(state, generation) {
            break;
        }
        if state.frozen.load(Ordering::Acquire) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read while the freeze began: held until the thaw.
                while state.frozen.load(Ordering::Acquire) && !ended(state, generation) {
                    thread::sleep(POLL);
                }
                if ended(state, generation) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().expect("clone");
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut TcpStream, byte: u8) -> std::io::Result<u8> {
        stream.write_all(&[byte])?;
        let mut got = [0u8];
        stream.read_exact(&mut got)?;
        Ok(got[0])
    }

    #[test]
    fn in_front_of_keeps_the_rest_of_the_url() {
        let (proxy, url) =
            Proxy::in_front_of("postgres://me:pw@127.0.0.1:5432/test?sslmode=disable")
                .expect("proxy");
        assert_eq!(
            url,
            format!(
                "postgres://me:pw@127.0.0.1:{}/test?sslmode=disable",
                proxy.port()
            )
        );
        let (proxy, url) = Proxy::in_front_of("redis://127.0.0.1:6379").expect("proxy");
        assert_eq!(url, format!("redis://127.0.0.1:{}", proxy.port()));
    }

    #[test]
    fn forwards_holds_while_frozen_and_closes_on_reset() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert_eq!(round_trip(&mut stream, 1).expect("forwarded"), 1);
        proxy.freeze();
        let held = round_trip(&mut stream, 2).expect_err("nothing comes back while frozen");
        assert!(matches!(
            held.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ));
        proxy.thaw();
        let mut got = [0u8];
        stream
            .read_exact(&mut got)
            .expect("the held byte after the thaw");
        assert_eq!(got[0], 2);
        proxy.reset();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            matches!(closed, Ok(0)) || closed.is_err(),
            "closed: {closed:?}"
        );
        assert_eq!(proxy.accepted(), 1);
    }

    fn closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(stream.read_to_end(&mut rest), Ok(0) | Err(_))
    }

    #[test]
    fn cut_from_closes_later_connections_and_refuses_new_ones_until_restored() {
        let proxy = Proxy::start(echo()).expect("proxy");
        let connect = || {
            let stream = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            stream
        };
        let mut kept = connect();
        assert_eq!(round_trip(&mut kept, 1).expect("forwarded"), 1);
        let mark = proxy.accepted();
        let mut cut = connect();
        assert_eq!(round_trip(&mut cut, 2).expect("forwarded"), 2);
        proxy.cut_from(mark);
        assert!(closed(&mut cut), "a connection since the mark is closed");
        assert_eq!(round_trip(&mut kept, 3).expect("kept"), 3);
        let mut refused = connect();
        assert!(closed(&mut refused), "a new connection is closed at once");
        proxy.restore();
        let mut again = connect();
        assert_eq!(round_trip(&mut again, 4).expect("forwarded again"), 4);
    }
}
