//! The hub connection's plumbing, apart from the session's rules: building the awc client
//! (rustls, `TCP_NODELAY`), writing queued messages in order, reassembling fragmented
//! messages under a size cap, and reading the cooldown a 1008 close asks for. The HubActor
//! (`actors/hub.rs`) decides what to send and what incoming frames mean.

use actix_codec::Framed;
use actix_http::ws::{Codec, Item, Message as WsMessage, ProtocolError};
use actix_service::Service;
use awc::BoxedSocket;
use bytes::{Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::config::Config;

pub type WsSink = SplitSink<Framed<BoxedSocket, Codec>, WsMessage>;

/// The awc client for the hub: our TLS config (bundled roots plus `ca_file`, ALPN
/// `http/1.1`), `TCP_NODELAY`, and `connect_timeout` on every stage.
pub fn build_client(config: &Config) -> Result<awc::Client, String> {
    client(config, true)
}

/// The awc client for the hub's HTTP API: the same, and no redirects (the request carries
/// the token: it goes nowhere the config did not name).
pub fn build_api_client(config: &Config) -> Result<awc::Client, String> {
    client(config, false)
}

fn client(config: &Config, redirects: bool) -> Result<awc::Client, String> {
    let tls = crate::tls::client_config(config.ca_file.as_deref())?;
    // No `max_http_version`, on the connector or the builder: it replaces the TLS config (and
    // `ca_file` with it) by awc's default. Ours already offers only HTTP/1.1 in ALPN.
    let connector = awc::Connector::new()
        .connector(NoDelay::default())
        .rustls_0_23(tls)
        .timeout(config.connect_timeout)
        .handshake_timeout(config.connect_timeout);
    let builder = awc::Client::builder()
        .connector(connector)
        .timeout(config.connect_timeout);
    Ok(if redirects {
        builder.finish()
    } else {
        builder.disable_redirects().finish()
    })
}

/// Writes the session's queued messages in order until the queue closes or a write fails.
pub async fn write_all(
    mut sink: WsSink,
    mut queue: mpsc::UnboundedReceiver<WsMessage>,
) -> Result<(), ProtocolError> {
    while let Some(message) = queue.recv().await {
        sink.send(message).await?;
    }
    Ok(())
}

/// The wait a 1008 close asks for: "cooldown active: retry in 37s" → 37 s.
pub fn cooldown_from(code: Option<u16>, reason: &str) -> Option<Duration> {
    if code != Some(1008) {
        return None;
    }
    let rest = &reason[reason.find("retry in")? + "retry in".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let secs: u64 = digits.parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

/// Why a fragmented message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentError {
    /// A new message began before the previous one ended (the protocol forbids it).
    Interleaved { bytes: usize },
    /// A continuation with no first frame before it.
    Orphan { bytes: usize },
    /// The whole message would pass the limit.
    TooLarge { bytes: usize },
}

/// Reassembles a message sent in fragments, never holding more than `limit` bytes.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: Option<(bool, BytesMut)>,
}

impl Reassembly {
    /// Takes one fragment; a whole message (`text`?, bytes) once its last fragment is in.
    pub fn push(
        &mut self,
        item: Item,
        limit: usize,
    ) -> Result<Option<(bool, Bytes)>, FragmentError> {
        let (chunk, last) = match item {
            Item::FirstText(data) | Item::FirstBinary(data) if self.partial.is_some() => {
                self.partial = None;
                return Err(FragmentError::Interleaved { bytes: data.len() });
            }
            Item::FirstText(data) => {
                self.partial = Some((true, BytesMut::new()));
                (data, false)
            }
            Item::FirstBinary(data) => {
                self.partial = Some((false, BytesMut::new()));
                (data, false)
            }
            Item::Continue(data) => (data, false),
            Item::Last(data) => (data, true),
        };
        let Some((_, buffer)) = &mut self.partial else {
            return Err(FragmentError::Orphan { bytes: chunk.len() });
        };
        let total = buffer.len() + chunk.len();
        if total > limit {
            self.partial = None;
            return Err(FragmentError::TooLarge { bytes: total });
        }
        buffer.extend_from_slice(&chunk);
        if !last {
            return Ok(None);
        }
        Ok(self
            .partial
            .take()
            .map(|(text, data)| (text, data.freeze())))
    }
}

/// The TCP connector with `TCP_NODELAY` set on every connection: a frame the hub does not
/// answer must not hold the next one back for the peer's delayed ACK (about 40 ms on Linux).
/// awc's default connector leaves Nagle on.
#[derive(Clone, Default)]
struct NoDelay(actix_tls::connect::ConnectorService);

impl Service<actix_tls::connect::ConnectInfo<awc::http::Uri>> for NoDelay {
    type Response = actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>;
    type Error = actix_tls::connect::ConnectError;
    type Future =
        futures_util::future::LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        Service::<actix_tls::connect::ConnectInfo<awc::http::Uri>>::poll_ready(&self.0, cx)
    }

    fn call(&self, request: actix_tls::connect::ConnectInfo<awc::http::Uri>) -> Self::Future {
        let connecting = self.0.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            // Best effort: a socket that refuses the option still works, only slower.
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_is_read_from_1008_close_reason_only() {
        assert_eq!(
            cooldown_from(Some(1008), "cooldown active: retry in 37s"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            cooldown_from(Some(1008), "retry in 5 s"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(cooldown_from(Some(1000), "retry in 5s"), None);
        assert_eq!(cooldown_from(Some(1008), "policy violation"), None);
        assert_eq!(cooldown_from(Some(1008), "retry in é"), None);
    }

    #[test]
    fn fragments_are_reassembled_under_the_limit() {
        let mut r = Reassembly::default();
        assert_eq!(
            r.push(Item::FirstText(Bytes::from_static(b"ab")), 10),
            Ok(None)
        );
        assert_eq!(
            r.push(Item::Continue(Bytes::from_static(b"cd")), 10),
            Ok(None)
        );
        assert_eq!(
            r.push(Item::Last(Bytes::from_static(b"e")), 10),
            Ok(Some((true, Bytes::from_static(b"abcde"))))
        );
        assert_eq!(
            r.push(Item::Continue(Bytes::from_static(b"x")), 10),
            Err(FragmentError::Orphan { bytes: 1 })
        );
        r.push(Item::FirstBinary(Bytes::from_static(b"123456")), 10)
            .unwrap();
        assert_eq!(
            r.push(Item::Last(Bytes::from_static(b"78901")), 10),
            Err(FragmentError::TooLarge { bytes: 11 })
        );
        r.push(Item::FirstText(Bytes::new()), 10).unwrap();
        assert_eq!(
            r.push(Item::FirstText(Bytes::from_static(b"z")), 10),
            Err(FragmentError::Interleaved { bytes: 1 })
        );
    }
}
