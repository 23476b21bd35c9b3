//! HTTP serving: the client listener (WebSocket upgrades, the fallback
//! transports, the server API, health, the demo) served by hyper with
//! herald's own limits on every HTTP connection, and the optional admin
//! listener (`/metrics`, `/healthz`, `/readyz`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{warn, Instrument};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use crate::admission::upgrade;
use crate::ctx::Ctx;

/// How much later than `write_timeout` a socket's own deadline
/// ([`DeadlineIo`]) fires: a connection's deadline (the core's) ends it
/// first, and is what is counted (`herald_edge_write_stalls_total`); the
/// socket's is the backstop for what no connection covers (a response
/// hyper still writes after its session ended, an API reply).
pub(crate) const SOCKET_MARGIN: Duration = Duration::from_secs(1);

/// A client socket with a write deadline: a write (or flush) that makes no
/// progress for `limit` fails with `TimedOut`, so hyper drops the
/// connection and every byte it held for it. This bounds every response on
/// every transport (an SSE stream, a long-poll answer, an API reply, a
/// WebSocket) against a client that stops reading, in one place.
pub(crate) struct DeadlineIo {
    io: TcpStream,
    limit: Duration,
    /// Armed at the first write that could not proceed; made then (an idle
    /// connection carries no timer).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl DeadlineIo {
    pub(crate) fn new(io: TcpStream, limit: Duration) -> DeadlineIo {
        DeadlineIo {
            io,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// After a write that could not proceed: pending until the deadline,
    /// then the error that ends the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(t) = &mut self.timer else {
            return Poll::Pending;
        };
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("herald_edge_http_write_stalls_total").increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for write_timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        p: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl AsyncRead for DeadlineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeadlineIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progressed(p, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progressed(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_flush(cx);
        this.progressed(p, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progressed(p, cx)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on the admin listener until
/// `stop` resolves.
pub(crate) async fn serve_admin(
    ctx: Arc<Ctx>,
    metrics: PrometheusHandle,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let routes = warp::get().and(health(ctx).or(metrics_route(metrics)).unify());
    warp::serve(routes)
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
}

/// `/healthz` and `/readyz`.
fn health(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .map(|| "ok".into_response());
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(with_ctx(ctx))
        .then(|ctx: Arc<Ctx>| async move {
            if ctx.shutdown.is_draining() {
                return warp::reply::with_status(
                    "shutting down".to_string(),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response();
            }
            match ctx.readiness.check(&*ctx.log).await {
                Ok(()) => warp::reply::with_status("ready".to_string(), StatusCode::OK),
                Err(why) => warp::reply::with_status(why, StatusCode::SERVICE_UNAVAILABLE),
            }
            .into_response()
        });
    healthz.or(readyz).unify()
}

/// `/metrics`, Prometheus' text format.
fn metrics_route(
    metrics: PrometheusHandle,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path("metrics").and(warp::path::end()).map(move || {
        herald_hub::outbox::report_queued_bytes();
        metrics::gauge!("herald_runtime_tasks").set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as f64,
        );
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    })
}

/// The TCP peer of a request, put in its extensions by [`serve_http`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The id of an HTTP request: the client's `X-Request-Id` when it is a
/// plausible id (1 to 128 characters of `A-Za-z0-9._:-`), else a new UUID.
/// Answered in `X-Request-Id` and carried by every log line of the request.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// HTTP connections (plain requests and WebSocket handshakes) open at once
/// beyond `max_connections`: what a node accepts before any WebSocket limit
/// applies.
const PENDING_HEADROOM: usize = 1024;

/// The HTTP server: warp's routes served by hyper, with what warp's own
/// loop does not offer: a time limit on reading a request's headers
/// (`server.header_read_timeout_secs`; a socket that drips headers is
/// closed), and a cap on HTTP connections open at once (those not yet
/// upgraded to WebSockets, which have their own limits). Stops accepting
/// when `stop` fires, then gives open requests a second to finish.
pub(crate) async fn serve_http(
    ctx: Arc<Ctx>,
    metrics: PrometheusHandle,
    listener: TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = warp::service(routes(ctx.clone(), metrics));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(
        ctx.cfg
            .limits
            .max_connections
            .saturating_add(PENDING_HEADROOM),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    warn!(%e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("herald_edge_connections_refused_total", "reason" => "http_connections")
                .increment(1);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        let svc = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let id = request_id(req.headers());
                let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
                let answer = hyper::service::Service::call(&svc, req);
                async move {
                    let mut resp = answer.await?;
                    if let Ok(v) = warp::http::HeaderValue::from_str(&id) {
                        resp.headers_mut().insert("x-request-id", v);
                    }
                    Ok::<_, Infallible>(resp)
                }
                .instrument(span)
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(DeadlineIo::new(tcp, ctx.cfg.write_timeout + SOCKET_MARGIN)),
                svc,
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

fn with_ctx(ctx: Arc<Ctx>) -> impl Filter<Extract = (Arc<Ctx>,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

fn routes(
    ctx: Arc<Ctx>,
    metrics: PrometheusHandle,
) -> impl Filter<Extract = (impl Reply,), Error = warp::Rejection> + Clone {
    let ctx_api = ctx.clone();
    // The raw query: parsed by admission, after its length is checked.
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
        .and(with_ctx(ctx.clone()))
        .and(warp::ext::optional::<PeerAddr>().map(|p: Option<PeerAddr>| p.map(|p| p.0)))
        .then(upgrade);
    // With an admin listener, `/metrics` is served there only.
    let public_metrics = ctx.cfg.admin_listen.is_none();
    let metrics = warp::any()
        .and_then(move || async move {
            if public_metrics {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(metrics_route(metrics));
    let fallback = crate::fallback::routes(ctx_api.clone());
    // The demo: static files, only when configured.
    let demo_dir = ctx_api.cfg.demo_dir.clone();
    let demo_on = demo_dir.is_some();
    let demo = warp::path("demo")
        .and(warp::any().and_then(move || async move {
            if demo_on {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        }))
        .untuple_one()
        .and(warp::fs::dir(demo_dir.unwrap_or_default()));
    let api = crate::api::routes(ctx_api);
    warp::get()
        .and(ws.or(health(ctx)).or(metrics).or(demo))
        .map(|r| Box::new(r) as Box<dyn Reply>)
        .or(fallback.map(|r| Box::new(r) as Box<dyn Reply>))
        .unify()
        .or(api.map(|r| Box::new(r) as Box<dyn Reply>))
        .unify()
}
