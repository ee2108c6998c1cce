//! The webhook client's connections: resolve once, check, connect to the checked addresses.
//!
//! [`CheckedConnector`] is the TCP layer under `hyper-rustls`: it resolves the URL's host, refuses
//! it unless every address is public (or [`Config::webhook_allow_private`] is set), and connects
//! to those checked addresses (the first that answers), so DNS rebinding cannot swap in another
//! one. TLS then runs over that connection with the URL's hostname as SNI and as the name the
//! certificate must be valid for, against Mozilla's roots (`webpki-roots`) plus
//! [`Config::webhook_extra_roots`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::config::Config;

/// The webhook HTTP(S) client.
pub type HttpClient = Client<HttpsConnector<CheckedConnector>, Full<Bytes>>;

/// Why a delivery did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// It must never be sent (bad URL, non-public address): no retry.
    #[error("{0}")]
    Refused(String),
    /// It may work later.
    #[error("{0}")]
    Failed(String),
}

/// The TCP connector under TLS: see the module documentation.
#[derive(Debug, Clone)]
pub struct CheckedConnector {
    allow_private: bool,
}

impl tower::Service<Uri> for CheckedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = PostError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, PostError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PostError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = checked_addresses(&uri, allow_private).await?;
            let mut failure = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        // Only latency: a failure here changes nothing else.
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(e) => failure = Some(format!("connecting to {addr}: {e}")),
                }
            }
            Err(PostError::Failed(failure.unwrap_or_default()))
        })
    }
}

/// Resolves the host of `uri` once; its addresses (at least one) if all of them may be reached.
async fn checked_addresses(uri: &Uri, allow_private: bool) -> Result<Vec<SocketAddr>, PostError> {
    let host = uri
        .host()
        .ok_or_else(|| PostError::Refused("no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = uri.port_u16().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| PostError::Failed(format!("resolving {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(PostError::Failed(format!("{host} has no address")));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(PostError::Refused(format!(
                "{host} resolves to {}",
                bad.ip()
            )));
        }
    }
    Ok(addrs)
}

/// The client for `config`: http and https over [`CheckedConnector`]. Fails only on an
/// unusable certificate in [`Config::webhook_extra_roots`].
pub fn client(config: &Config) -> Result<HttpClient, rustls::Error> {
    let tls = tls_config(&config.webhook_extra_roots)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(CheckedConnector {
            allow_private: config.webhook_allow_private,
        });
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// rustls on the ring provider, trusting Mozilla's roots and `extra_roots` (DER).
fn tls_config(extra_roots: &[Vec<u8>]) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in extra_roots {
        roots.add(CertificateDer::from(der.clone()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Classifies a client error: a [`PostError`] from [`CheckedConnector`] somewhere in its chain
/// as it is, anything else (TLS, connection, protocol) as [`PostError::Failed`] with the chain.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> PostError {
    let mut messages = Vec::new();
    for e in std::iter::successors(Some(error), |e| e.source()) {
        if let Some(post) = e.downcast_ref::<PostError>() {
            return post.clone();
        }
        messages.push(e.to_string());
    }
    PostError::Failed(messages.join(": "))
}

/// Whether an address is on the public internet (not this host, not a private network).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o0 == 0
                || (o0 == 100 && (o1 & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s0 = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80)
        }
    }
}
