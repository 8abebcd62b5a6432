//! TLS for `wss://` URLs: the rustls configuration a client uses, built from the platform's root certificates unless
//! the application gave roots or a whole configuration. rustls runs on the ring crypto provider, named explicitly, so
//! that another provider enabled elsewhere in an application's build does not make the choice ambiguous.

use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Where a client's TLS configuration comes from. Cheap to clone: clones share the configuration, and the platform's
/// roots are loaded once per client, on its first `wss://` connect.
#[derive(Clone)]
pub(crate) struct Tls {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// The platform's roots, loaded on first use; a failed load is tried again on the next connect.
    Platform(Arc<Mutex<Option<Arc<ClientConfig>>>>),
    /// What the application gave.
    Given(Arc<ClientConfig>),
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            source: Source::Platform(Arc::default()),
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.source {
            Source::Platform(_) => "Tls(the platform's roots)",
            Source::Given(_) => "Tls(given)",
        })
    }
}

impl Tls {
    pub(crate) fn given(config: Arc<ClientConfig>) -> Tls {
        Tls {
            source: Source::Given(config),
        }
    }

    /// A configuration that trusts exactly the certificates in `pem`.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|error| format!("cannot read the PEM: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("not a usable certificate: {error}"))?;
        }
        if roots.is_empty() {
            return Err("the PEM holds no CERTIFICATE block".to_owned());
        }
        let config = with_roots(roots).map_err(|error| error.to_string())?;
        Ok(Tls::given(Arc::new(config)))
    }

    /// The configuration for the next `wss://` connect. Loading the platform's roots reads files, so it runs on
    /// tokio's blocking pool.
    pub(crate) async fn client_config(&self) -> Result<Arc<ClientConfig>, std::io::Error> {
        let cache = match &self.source {
            Source::Given(config) => return Ok(config.clone()),
            Source::Platform(cache) => cache,
        };
        if let Some(config) = cache.lock().as_ref() {
            return Ok(config.clone());
        }
        let config = tokio::task::spawn_blocking(platform)
            .await
            .map_err(std::io::Error::other)??;
        let config = Arc::new(config);
        *cache.lock() = Some(config.clone());
        Ok(config)
    }
}

/// A configuration that trusts the platform's roots (on Linux the system's CA bundle, which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` can point elsewhere).
fn platform() -> Result<ClientConfig, std::io::Error> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "a platform root certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "loaded the platform's root certificates");
    if roots.is_empty() {
        let why = match loaded.errors.first() {
            Some(error) => format!(": {error}"),
            None => String::new(),
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no root certificates found on this platform{why}"),
        ));
    }
    with_roots(roots).map_err(std::io::Error::other)
}

fn with_roots(roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificates_is_refused() {
        assert_eq!(Tls::from_pem(b"").unwrap_err(), "the PEM holds no CERTIFICATE block");
        assert_eq!(
            Tls::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err(),
            "the PEM holds no CERTIFICATE block"
        );
    }

    #[test]
    fn broken_pem_is_refused() {
        let error = Tls::from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(error.starts_with("cannot read the PEM"), "{error}");
        let error = Tls::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(error.starts_with("not a usable certificate"), "{error}");
    }
}
