//! TLS for `wss://` URLs: what a client trusts ([`TlsConfig`]) and the rustls configuration built from it, from the
//! platform's root certificates unless the application gave roots of its own. rustls runs on the ring crypto provider, named explicitly, so
//! that another provider enabled elsewhere in an application's build does not make the choice ambiguous.

use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// What a client trusts for `wss://` connections, given to [`ClientBuilder::tls`](crate::ClientBuilder::tls): the
/// platform's root certificates ([`platform`](TlsConfig::platform), the default), roots of your own
/// ([`empty`](TlsConfig::empty) and add them), or both. The client checks the server's certificate against these
/// roots, on rustls with the ring crypto provider; this type is the whole of its TLS surface, so the client's API
/// does not depend on rustls's.
///
/// ```no_run
/// use emitter_client::{Client, TlsConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A server whose certificate comes from your own certificate authority: trust it, and nothing else.
/// let ca = std::fs::read("ca.pem")?;
/// let tls = TlsConfig::empty().add_root_certificates_pem(&ca)?;
/// let client = Client::builder().tls(tls).build();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Whether the platform's roots are trusted as well (loaded on the first `wss://` connect).
    platform: bool,
    /// The roots the application added.
    roots: Vec<CertificateDer<'static>>,
}

impl TlsConfig {
    /// Trusts the platform's root certificates (on Linux the system's CA bundle, which `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` can point elsewhere), and any added with the `add_*` methods. What a client uses unless told
    /// otherwise. The roots are loaded on the first `wss://` connect; a platform without any fails that connect.
    ///
    /// ```
    /// let client = emitter_client::Client::builder().tls(emitter_client::TlsConfig::platform()).build();
    /// ```
    pub fn platform() -> TlsConfig {
        TlsConfig {
            platform: true,
            roots: Vec::new(),
        }
    }

    /// Trusts no root until some are added with the `add_*` methods: for a server whose certificate comes from your
    /// own certificate authority. With none added, every `wss://` connect fails.
    pub fn empty() -> TlsConfig {
        TlsConfig::default()
    }

    /// Adds the certificates in `pem` to the roots: one or more `-----BEGIN CERTIFICATE-----` blocks; other blocks
    /// are skipped.
    ///
    /// Fails with [`Error::InvalidCertificates`] when `pem` holds no certificate or one that cannot be read.
    ///
    /// ```
    /// let error = emitter_client::TlsConfig::empty().add_root_certificates_pem("not a certificate").unwrap_err();
    /// assert_eq!(error.to_string(), "invalid root certificates: the PEM holds no CERTIFICATE block");
    /// ```
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Result<TlsConfig, Error> {
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(pem.as_ref()) {
            let certificate =
                certificate.map_err(|error| Error::InvalidCertificates(format!("cannot read the PEM: {error}")))?;
            self = self.add_root_certificate_der(certificate.to_vec())?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::InvalidCertificates(
                "the PEM holds no CERTIFICATE block".to_owned(),
            ));
        }
        Ok(self)
    }

    /// Adds one certificate, DER-encoded, to the roots.
    ///
    /// Fails with [`Error::InvalidCertificates`] when it is not a usable certificate.
    ///
    /// ```
    /// let error = emitter_client::TlsConfig::empty().add_root_certificate_der(vec![1, 2, 3]).unwrap_err();
    /// assert!(error.to_string().starts_with("invalid root certificates: not a usable certificate"));
    /// ```
    pub fn add_root_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Result<TlsConfig, Error> {
        let certificate = CertificateDer::from(der.into());
        // Parsed here, so that a broken certificate fails now rather than on the first connect.
        RootCertStore::empty()
            .add(certificate.clone())
            .map_err(|error| Error::InvalidCertificates(format!("not a usable certificate: {error}")))?;
        self.roots.push(certificate);
        Ok(self)
    }
}

/// A client's TLS: what it trusts, and the rustls configuration built from it on the first `wss://` connect. Cheap to
/// clone: clones share the configuration, and the platform's roots are loaded once per client.
#[derive(Clone, Debug)]
pub(crate) struct Tls {
    trust: TlsConfig,
    /// Built on first use; a failed load of the platform's roots is tried again on the next connect.
    built: Arc<Mutex<Option<Arc<ClientConfig>>>>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls::new(TlsConfig::platform())
    }
}

impl Tls {
    pub(crate) fn new(trust: TlsConfig) -> Tls {
        Tls {
            trust,
            built: Arc::default(),
        }
    }

    /// The configuration for the next `wss://` connect. Loading the platform's roots reads files, so it runs on
    /// tokio's blocking pool.
    pub(crate) async fn client_config(&self) -> Result<Arc<ClientConfig>, std::io::Error> {
        if let Some(config) = self.built.lock().as_ref() {
            return Ok(config.clone());
        }
        let mut roots = if self.trust.platform {
            tokio::task::spawn_blocking(platform)
                .await
                .map_err(std::io::Error::other)??
        } else {
            RootCertStore::empty()
        };
        for certificate in &self.trust.roots {
            roots.add(certificate.clone()).map_err(std::io::Error::other)?;
        }
        let config = Arc::new(with_roots(roots).map_err(std::io::Error::other)?);
        *self.built.lock() = Some(config.clone());
        Ok(config)
    }
}

/// A configuration that trusts the platform's roots (on Linux the system's CA bundle, which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` can point elsewhere).
fn platform() -> Result<RootCertStore, std::io::Error> {
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
    Ok(roots)
}

fn with_roots(roots: RootCertStore) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// rustls's provider on the ring crate. From 0.23.48 rustls marks it deprecated ("no support for post-quantum
/// algorithms"); it is still this crate's one provider (see the module's docs), so the warning is allowed here: a
/// `cargo update` must not break a build that denies warnings. Moving to another provider is a change of its own.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(pem: &[u8]) -> String {
        match TlsConfig::empty().add_root_certificates_pem(pem) {
            Err(Error::InvalidCertificates(reason)) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert_eq!(refusal(b""), "the PEM holds no CERTIFICATE block");
        assert_eq!(
            refusal(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "the PEM holds no CERTIFICATE block"
        );
    }

    #[test]
    fn broken_pem_is_refused() {
        let error = refusal(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert!(error.starts_with("cannot read the PEM"), "{error}");
        let error = refusal(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(error.starts_with("not a usable certificate"), "{error}");
    }
}
