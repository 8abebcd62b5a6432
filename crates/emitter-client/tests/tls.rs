//! `wss://`: the client against emitter's server served over TLS by the test itself (axum's router, behind rustls),
//! with a certificate authority and a server certificate made on the spot. The client links when it trusts that
//! authority, and fails to connect, with the certificate error as the cause, when it does not.
//!
//! `serve_tls` and `server_tls_config` are the book's sample of TLS in the axum app itself (`docs/src/axum.md`
//! quotes them word for word): keep them as an application would write them.

mod support;

use std::error::Error as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use emitter_client::{Client, ClientStatus, Error, TlsConfig};
use emitter_core::Server;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use support::within;

/// Serves `app` over TLS on `listener` until the Krmx server closes. Every connection does its TLS handshake on a
/// task of its own, so a slow or silent client holds up nobody else; hyper then serves `app` on it with HTTP/1.1
/// upgrades on, which the WebSocket endpoint needs. Closing the Krmx server closes its WebSockets and stops the
/// accept loop; other HTTP connections end on their own.
async fn serve_tls(
    krmx: Server,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    emitter_axum::mark_listening(&krmx, port).map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(tls);
    let closing = krmx.closing();
    tokio::pin!(closing);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut closing => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .with_upgrades()
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// The server's TLS configuration from PEM files: its certificate chain (its own certificate first, then any
/// intermediates) and its private key. rustls runs on the ring crypto provider, as in emitter-client.
fn server_tls_config(chain: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(chain)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    // Deprecated from rustls 0.23.48 (no post-quantum key exchange); the same provider as emitter-client's.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A certificate authority named `authority` (its PEM) and a server configuration with a certificate it issued for
/// `names`, read back from PEM files as a server would.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn make_pki(authority: &str, names: &[&str]) -> Pki {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, authority);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let certificate = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();

    static FILES: AtomicUsize = AtomicUsize::new(0);
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("emitter-client-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (chain_path, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain_path, certificate.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = server_tls_config(&chain_path, &key_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// An echoing Krmx server served over TLS with a certificate for `localhost`; returns it, the PKI and its
/// `wss://localhost:PORT/` URL.
async fn start_tls() -> (Server, Pki, String) {
    let pki = make_pki("emitter test CA", &["localhost"]);
    let server = Server::new();
    server.on_message(|u, m| {
        let _ = u.server().broadcast(m, None);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = emitter_axum::router(&server);
    tokio::spawn(serve_tls(server.clone(), listener, pki.server.clone(), app));
    (server, pki, format!("wss://localhost:{port}/"))
}

/// The messages of `error`'s source chain, outermost first.
fn causes(error: &Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// The client links over `wss://` when it trusts the authority that issued the server's certificate, and messages
/// flow both ways.
#[tokio::test]
async fn links_over_wss_with_the_given_root() {
    let (server, pki, url) = start_tls().await;

    let client = Client::builder()
        .tls(TlsConfig::empty().add_root_certificates_pem(&pki.ca_pem).unwrap())
        .build();
    within("connect", client.connect(&url)).await.unwrap();
    within("link", client.link("simon", None)).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Linked);
    assert_eq!(server.user("simon").map(|user| user.is_linked), Some(true));

    let echoed = client.wait_for_payload::<String>("chat/say");
    client.send_payload("chat/say", "over tls").unwrap();
    assert_eq!(within("echo", echoed).await.unwrap(), "over tls");

    within("leave", client.leave()).await.unwrap();
    within("disconnect", client.disconnect(false)).await.unwrap();
    assert_eq!(client.status(), ClientStatus::Closed);
    within("server close", server.close()).await.unwrap();
}

/// The same with the authority's certificate given as DER instead of PEM.
#[tokio::test]
async fn links_over_wss_with_a_given_der_root() {
    let (server, pki, url) = start_tls().await;
    let mut tls = TlsConfig::empty();
    for certificate in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        tls = tls.add_root_certificate_der(certificate.unwrap().to_vec()).unwrap();
    }

    let client = Client::builder().tls(tls).build();
    within("connect", client.connect(&url)).await.unwrap();
    within("link", client.link("simon", None)).await.unwrap();
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

/// Trusting another authority, the connect fails: `Error::Connect`, with rustls' verdict among its causes, a `close`
/// event, and the client `closed` and ready to connect again.
#[tokio::test]
async fn another_root_fails_with_a_certificate_error() {
    let (server, pki, url) = start_tls().await;
    let stranger = make_pki("another CA", &["localhost"]);
    assert_ne!(stranger.ca_pem, pki.ca_pem);

    let client = Client::builder()
        .tls(TlsConfig::empty().add_root_certificates_pem(&stranger.ca_pem).unwrap())
        .build();
    let closed = client.wait_for_close();
    let error = within("connect", client.connect(&url)).await.unwrap_err();
    assert!(
        matches!(&error, Error::Connect { url: at, .. } if at == &url),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("error while trying to connect to the server at {url}")
    );
    let causes = causes(&error);
    assert!(causes.contains("invalid peer certificate: UnknownIssuer"), "{causes}");
    within("close event", closed).await;
    assert_eq!(client.status(), ClientStatus::Closed);
    assert!(server.users().is_empty());

    // Nothing is broken: the right client still gets in.
    let client = Client::builder()
        .tls(TlsConfig::empty().add_root_certificates_pem(&pki.ca_pem).unwrap())
        .build();
    within("connect", client.connect(&url)).await.unwrap();
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}

/// The default client trusts the platform's roots, and no platform trusts an authority made a moment ago: the connect
/// fails with an error, not a panic, whether the platform has roots or none.
#[tokio::test]
async fn the_platform_roots_do_not_trust_the_test_authority() {
    let (server, _pki, url) = start_tls().await;
    let client = Client::new();
    let error = within("connect", client.connect(&url)).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let causes = causes(&error);
    assert!(
        causes.contains("UnknownIssuer") || causes.contains("no root certificates found on this platform"),
        "{causes}"
    );
    assert_eq!(client.status(), ClientStatus::Closed);
    within("server close", server.close()).await.unwrap();
}

/// The certificate is checked against the host in the URL: one issued for `localhost` does not do for `127.0.0.1`.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let (server, pki, url) = start_tls().await;
    let client = Client::builder()
        .tls(TlsConfig::empty().add_root_certificates_pem(&pki.ca_pem).unwrap())
        .build();
    let by_address = url.replace("localhost", "127.0.0.1");
    let error = within("connect", client.connect(&by_address)).await.unwrap_err();
    let causes = causes(&error);
    assert!(
        causes.contains(r#"invalid peer certificate: certificate not valid for name "127.0.0.1""#),
        "{causes}"
    );
    within("server close", server.close()).await.unwrap();
}

/// A `ws://` URL still goes in the clear, whatever roots the client was given.
#[tokio::test]
async fn ws_urls_stay_plain() {
    let (server, url) = support::start_default().await;
    let pki = make_pki("emitter test CA", &["localhost"]);
    let client = Client::builder()
        .tls(TlsConfig::empty().add_root_certificates_pem(&pki.ca_pem).unwrap())
        .build();
    support::connect_and_link(&client, &url, "simon").await;
    within("disconnect", client.disconnect(true)).await.unwrap();
    within("server close", server.close()).await.unwrap();
}
