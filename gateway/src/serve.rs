//! The HTTP listener: its doors, before any request is read.
//!
//! One connection, on the happy path:
//!
//! 1. Accepted. Over `max_connections` in all, or `max_connections_per_ip`
//!    from one address, it is answered `503` (a JSON error in the API's
//!    shape, `Connection: close`) without reading anything, and closed.
//! 2. With `[gateway.tls]`, the TLS handshake, bounded by
//!    `header_read_timeout_ms`.
//! 3. HTTP/1.1 with a header-read timeout (`header_read_timeout_ms`): a
//!    client that does not send a whole request head in time is dropped
//!    (slowloris). The same timer runs while a keep-alive connection waits
//!    for its next request, so it is also the idle timeout.
//! 4. Each request carries the peer address (`ConnectInfo`) for the
//!    per-address limits; WebSocket upgrades go through.
//! 5. On shutdown, each connection is told to finish its in-flight request
//!    and close; the loop stops accepting at once.
//!
//! A failed accept (out of file descriptors) is logged, and the loop waits
//! a moment and goes on: the other connections keep being served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

/// The listener's doors.
#[derive(Clone)]
pub struct Doors {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub tls: Option<confab_query::pgwire::TlsAcceptor>,
}

/// Open connections, in all and per address.
#[derive(Default)]
struct Open {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its slots back when dropped.
struct Admitted {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.open.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Open {
    fn admit(self: &Arc<Self>, ip: IpAddr, doors: &Doors) -> Result<Admitted, &'static str> {
        let mut per_ip = self.per_ip.lock();
        if self.total.load(Ordering::Acquire) >= doors.max_connections {
            return Err("the server has as many connections as it takes; retry shortly");
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= doors.max_connections_per_ip {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            return Err("this address has as many connections open as it may; close some and retry");
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted { open: self.clone(), ip })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves `app` on `listener` until `stop` resolves; then lets in-flight
/// requests finish.
pub async fn serve(listener: TcpListener, app: Router, doors: Doors, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let open = Arc::new(Open::default());
    let (closing, closed) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "could not accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let admitted = open.admit(peer.ip(), &doors);
        let (app, doors, mut closed) = (app.clone(), doors.clone(), closed.clone());
        tokio::spawn(async move {
            let admitted = match admitted {
                Ok(admitted) => admitted,
                Err(reason) => return refuse(socket, reason).await,
            };
            // A second handle on the socket, to notice a client that goes
            // away while its request runs: hyper does not read then.
            let (socket, watch) = match duplicate(socket) {
                Ok(pair) => pair,
                Err(_) => return,
            };
            let io: Box<dyn Io> = match &doors.tls {
                Some(acceptor) => match tokio::time::timeout(doors.header_read_timeout, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    _ => return, // A failed or slow handshake.
                },
                None => Box::new(socket),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { app.call(request).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(doors.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // The client closed: drop the connection, and with it the
                // request in flight (a running SQL statement stops).
                () = peer_closed(watch) => {}
                () = async { let _ = closed.wait_for(|closing| *closing).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(admitted);
        });
    }
    let _ = closing.send(true);
    // Requests in flight finish: wait until every connection has gone (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while open.total.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The socket, and a second handle on it for [`peer_closed`].
fn duplicate(socket: tokio::net::TcpStream) -> std::io::Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let socket = socket.into_std()?;
    let watch = socket.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(socket)?, tokio::net::TcpStream::from_std(watch)?))
}

/// Resolves when the client has closed (or reset) the connection. Bytes
/// waiting unread (a body being read, a pipelined request) are left to
/// hyper; the check comes back a moment later. A TLS client's close is
/// noticed only when its TCP connection ends.
async fn peer_closed(watch: tokio::net::TcpStream) {
    let mut probe = [0u8; 1];
    loop {
        match watch.peek(&mut probe).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Answers an over-cap connection in the API's error shape and closes it,
/// without reading its request.
async fn refuse(mut socket: tokio::net::TcpStream, reason: &str) {
    let body = serde_json::json!({"error": {"code": "unavailable", "message": reason}}).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(response.as_bytes())).await;
    let _ = socket.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let doors = Doors { max_connections: 3, max_connections_per_ip: 2, header_read_timeout: Duration::from_secs(1), tls: None };
        let open = Arc::new(Open::default());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let first = open.admit(one, &doors).unwrap();
        let _second = open.admit(one, &doors).unwrap();
        assert!(open.admit(one, &doors).is_err(), "two per address");
        let _third = open.admit(two, &doors).unwrap();
        assert!(open.admit(two, &doors).is_err(), "three in all");
        drop(first);
        assert!(open.admit(one, &doors).is_ok(), "a closed connection frees its slot");
    }
}
