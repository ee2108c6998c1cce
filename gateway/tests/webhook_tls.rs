//! https webhooks against a local rustls receiver with a self-signed certificate made here.
//!
//! The receiver listens on 127.0.0.1 and the callback URL names `localhost`, so these tests also
//! show that the gateway connects to the address it resolved and checked while TLS still uses the
//! hostname (SNI, certificate name).

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::Harness;
use corral_gateway::store::Store;
use corral_gateway::Config;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One request the receiver got: (SNI the client sent, headers, body).
type Delivery = (Option<String>, HeaderMap, Vec<u8>);

/// A running HTTPS receiver.
struct Receiver {
    port: u16,
    /// The certificate's DER (to trust it).
    cert: Vec<u8>,
    requests: mpsc::UnboundedReceiver<Delivery>,
    /// TLS handshakes that failed, with the server's error.
    handshake_failures: mpsc::UnboundedReceiver<String>,
}

/// Starts an HTTPS receiver on 127.0.0.1 whose self-signed certificate is valid for `names`; it
/// answers every request 204.
async fn receiver(names: &[&str]) -> Receiver {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, requests) = mpsc::unbounded_channel();
    let (failed, handshake_failures) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx, failed) = (acceptor.clone(), tx.clone(), failed.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => serve(tls, tx).await,
                    Err(e) => {
                        let _ = failed.send(e.to_string());
                    }
                }
            });
        }
    });
    Receiver {
        port,
        cert: cert.to_vec(),
        requests,
        handshake_failures,
    }
}

/// Serves HTTP/1 on an accepted TLS connection, reporting each request to `tx`.
async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    tx: mpsc::UnboundedSender<Delivery>,
) {
    let sni = tls.get_ref().1.server_name().map(String::from);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (tx, sni) = (tx.clone(), sni.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().to_vec());
            let _ = tx.send((sni, parts.headers, body.unwrap_or_default()));
            let answer = hyper::Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(http_body_util::Empty::<axum::body::Bytes>::new())
                .unwrap();
            Ok::<_, Infallible>(answer)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// Loopback allowed (the receiver is local), quick retries, and `roots` trusted.
fn config(roots: Vec<Vec<u8>>, attempts: u32) -> Config {
    Config {
        webhook_backoff: Duration::from_millis(20),
        webhook_attempts: attempts,
        webhook_allow_private: true,
        webhook_extra_roots: roots,
        ..Config::default()
    }
}

#[tokio::test]
async fn https_webhooks_are_delivered_signed_with_the_hostname_as_sni() {
    let mut rx = receiver(&["localhost"]).await;
    let h = Harness::with(config(vec![rx.cert.clone()], 8), common::quota(), 2).await;
    let url = format!("https://localhost:{}/hook?x=1", rx.port);
    let body = json!({"language": "python", "source": "1", "stdin": "tls", "callback_url": url});
    let (s, doc) = h.post(&h.alice, "/v1/jobs", &body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{doc}");
    let id = doc["id"].as_str().unwrap();
    let (sni, headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.requests.recv())
        .await
        .expect("an https webhook request")
        .unwrap();
    assert_eq!(sni.as_deref(), Some("localhost"));
    assert_eq!(headers["host"], format!("localhost:{}", rx.port).as_str());
    assert_eq!(
        headers["x-corral-signature"].to_str().unwrap(),
        corral_gateway::webhook::signature(&h.alice_secret, &body)
    );
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["id"], id);
    assert_eq!(doc["runs"][0]["stdout"], "tls");
    assert!(rx.handshake_failures.try_recv().is_err());
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.requests.recv()).await;
    assert!(extra.is_err(), "delivered webhook was sent again");
}

/// Submits a job whose webhook goes to `rx` as `localhost`, waits until the gateway gives up,
/// and checks the client reached the receiver but refused its certificate.
async fn assert_certificate_refused(h: &Harness, rx: &mut Receiver) {
    let url = format!("https://localhost:{}/hook", rx.port);
    let body = json!({"language": "python", "source": "1", "callback_url": url});
    let (s, doc) = h.post(&h.alice, "/v1/jobs?wait=true", &body).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let mut settled = false;
    for _ in 0..500 {
        if h.store.next_webhook_due().unwrap().is_none() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(settled, "the webhook is still pending");
    let failure = tokio::time::timeout(Duration::from_secs(5), rx.handshake_failures.recv())
        .await
        .expect("the client connected and aborted the handshake")
        .unwrap();
    assert!(failure.to_lowercase().contains("alert"), "{failure}");
    assert!(rx.requests.try_recv().is_err(), "a request was sent");
}

#[tokio::test]
async fn a_certificate_for_another_hostname_is_refused() {
    let mut rx = receiver(&["wrong.example"]).await;
    let h = Harness::with(config(vec![rx.cert.clone()], 2), common::quota(), 2).await;
    assert_certificate_refused(&h, &mut rx).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let mut rx = receiver(&["localhost"]).await;
    // The certificate is valid for the name but nobody trusts it.
    let h = Harness::with(config(vec![], 2), common::quota(), 2).await;
    assert_certificate_refused(&h, &mut rx).await;
}

#[tokio::test]
async fn an_unusable_extra_root_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(corral_gateway::SqliteStore::open(dir.path()).unwrap());
    let started = corral_gateway::Gateway::start(
        config(vec![b"not a certificate".to_vec()], 2),
        store as Arc<dyn Store>,
        prometheus::Registry::new(),
    )
    .await;
    let Err(e) = started else {
        panic!("the gateway started with a garbage root certificate");
    };
    assert!(
        matches!(e, corral_gateway::StartError::WebhookTls(_)),
        "{e}"
    );
}
