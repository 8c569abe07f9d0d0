//! The optional HTTP endpoint (`metrics_listen`): `/healthz` answers while the process is up,
//! `/readyz` while the hub session is identified (else 503 with the state, and the hub's
//! refusal when there is one), `/metrics` gives the Prometheus text of
//! the current [`Status`]. One actix-web worker thread, started by the StatusActor only when
//! configured; the address was checked at config time (loopback unless `metrics_public`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::status::Status;

type Shared = web::Data<Arc<RwLock<Status>>>;

/// Connections the endpoint holds open at once (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// Connections the kernel queues beyond those before it refuses more.
const BACKLOG: u32 = 16;

/// Binds and starts serving on the current actix System; the handle stops it.
pub fn serve(
    addr: SocketAddr,
    status: Arc<RwLock<Status>>,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let data: Shared = web::Data::new(status);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    // A flood of connections must not take the descriptors the sidecar's real work needs:
    // at most this many are open at once; further ones wait in a short kernel backlog (or
    // are refused there), idle ones are closed after a few seconds.
    .max_connections(MAX_CONNECTIONS)
    .backlog(BACKLOG)
    .keep_alive(Duration::from_secs(5))
    .client_request_timeout(Duration::from_secs(2))
    .client_disconnect_timeout(Duration::from_secs(1))
    // The sidecar's own ShutdownActor handles signals.
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(status: Shared) -> HttpResponse {
    let (state, refusal) = status
        .read()
        .map(|s| {
            let refusal = s.session.last_error.as_ref().map(|e| e.describe());
            (s.session.state.clone(), refusal)
        })
        .unwrap_or_default();
    if state == "identified" {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("identified\n")
    } else {
        // Why it is not ready, when the hub said why: a refusal an operator must act on.
        let body = match refusal {
            Some(refusal) => format!("{state}: {refusal}\n"),
            None => format!("{state}\n"),
        };
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(body)
    }
}

async fn metrics(status: Shared) -> HttpResponse {
    // The log counters move without a status change: read them as they are now.
    let text = status
        .read()
        .map(|s| {
            let mut s = s.clone();
            s.log = crate::status::LogCounters::current();
            s.prometheus()
        })
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
