//! TLS material and QUIC endpoint configuration.
//!
//! The node presents a certificate. By default clients pin exactly that
//! certificate (its DER bytes) instead of trusting any authority; a deployment
//! with its own CA (several nodes, one name) gives clients the CA bundle instead,
//! and they check the node's chain and name against it ([`ServerTrust`]). There
//! is no "accept any certificate" path anywhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// File names of the generated pair inside the data directory.
pub const CERT_FILE: &str = "server-cert.der";
/// The generated key's file name in the data folder.
pub const KEY_FILE: &str = "server-key.der";

#[derive(Debug, thiserror::Error)]
/// Why TLS material could not be had.
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    /// A file could not be read.
    Read {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    /// A file could not be written.
    Write {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("cannot generate certificate: {0}")]
    /// Generating a certificate failed (why).
    Generate(String),
    #[error("invalid TLS material: {0}")]
    /// A certificate or key does not parse (which, why).
    Invalid(String),
}

/// The node's certificate and private key.
pub struct TlsMaterial {
    /// The node's certificate.
    pub cert: CertificateDer<'static>,
    /// The certificates that chain it to a CA, sent with it (a PEM file's
    /// certificates after the first).
    pub intermediates: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads the configured pair, or the generated pair in `data_dir`, generating it on
/// first start (key file readable by the owner only).
pub fn load_or_generate(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        _ => (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE)),
    };
    if cert.is_none() && !cert_path.exists() && !key_path.exists() {
        generate(&cert_path, &key_path)?;
    } else if cert.is_none() && key_path.exists() {
        // The node's own key in its data folder: owner-only, even if an older
        // version or a copy left it wider. An operator's own key file elsewhere
        // is the operator's to protect.
        quicnprotochat_crypto::private_fs::private_file(&key_path).map_err(|source| {
            TlsError::Write {
                path: key_path.clone(),
                source,
            }
        })?;
    }
    let mut chain = read_certs(&cert_path)?;
    let cert = chain.remove(0);
    let key = read_key(&key_path)?;
    Ok(TlsMaterial {
        cert,
        intermediates: chain,
        key,
    })
}

/// Whether `bytes` are PEM text rather than DER (which starts with a SEQUENCE tag).
fn is_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN ")
}

/// A certificate file, PEM (its first certificate) or DER.
fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let bytes = read(path)?;
    if is_pem(&bytes) {
        CertificateDer::from_pem_slice(&bytes)
            .map_err(|e| TlsError::Invalid(format!("{}: no PEM certificate: {e}", path.display())))
    } else {
        Ok(CertificateDer::from(bytes))
    }
}

/// Every certificate of a file: a PEM file's in order (at least one), or one DER.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    if !is_pem(&bytes) {
        return Ok(vec![CertificateDer::from(bytes)]);
    }
    let invalid = |e: String| TlsError::Invalid(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A private key file, PEM (PKCS#8, PKCS#1 or SEC1) or DER.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    let key = if is_pem(&bytes) {
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| format!("no PEM private key: {e}"))
    } else {
        PrivateKeyDer::try_from(bytes).map_err(str::to_string)
    };
    key.map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn generate(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
    // Key first: a crash in between leaves no certificate without its key.
    write_file(key_path, &certified.signing_key.serialize_der(), 0o600)?;
    write_file(cert_path, certified.cert.der(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(idle.try_into().expect("small idle timeout")));
    t.keep_alive_interval(Some(idle / 3));
    // One bidirectional stream carries the RPC; refuse more.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    Arc::new(t)
}

/// QUIC server configuration: TLS 1.3 only, our ALPN only.
pub fn server_config(material: TlsMaterial) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            std::iter::once(material.cert)
                .chain(material.intermediates)
                .collect(),
            material.key,
        )
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(Duration::from_secs(30)));
    Ok(config)
}

/// What a client trusts to be its node.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Exactly this certificate (the default: the node's self-signed one).
    Pinned(CertificateDer<'static>),
    /// A certificate for `name`, chained to one of these authorities.
    Authorities {
        /// The CA certificates (`--ca-bundle`).
        roots: Arc<rustls::RootCertStore>,
        /// The name the node's certificate must carry.
        name: ServerName<'static>,
    },
}

impl From<CertificateDer<'static>> for ServerTrust {
    fn from(pinned: CertificateDer<'static>) -> Self {
        ServerTrust::Pinned(pinned)
    }
}

/// Reads a CA bundle: one or more PEM certificates (or one DER one).
pub fn read_ca_bundle(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// A name the node's certificate must carry: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| TlsError::Invalid(format!("{name:?} is not a DNS name or an IP address")))
}

/// QUIC client configuration that trusts what `trust` says and nothing else.
pub fn client_config(trust: impl Into<ServerTrust>) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust.into() {
        ServerTrust::Pinned(pinned) => Arc::new(PinnedCertVerifier {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }),
        ServerTrust::Authorities { roots, name } => Arc::new(NamedCertVerifier {
            inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Invalid(e.to_string()))?,
            name,
        }),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(Duration::from_secs(6)));
    Ok(config)
}

/// Accepts the server only if it presents exactly the pinned certificate, and
/// checks the handshake signature against that certificate's key. (rustls calls
/// this API "dangerous" because it replaces WebPKI path validation; pinning one
/// exact certificate is stricter than that validation, not looser.)
#[derive(Debug)]
struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain sent with it (a CA-issued node certificate's) changes
        // nothing: the leaf itself is what is trusted.
        let _ = intermediates;
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// WebPKI validation of the node's chain against the CA bundle, for the name
/// the client was given (the connection's SNI is a fixed placeholder: the
/// node serves one certificate whatever it is asked).
#[derive(Debug)]
struct NamedCertVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads a pinned certificate file (PEM or DER).
pub fn read_pinned_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    read_cert(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_keys_load_from_pem_or_der_alike() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("c.pem"), pair.cert.pem()).unwrap();
        std::fs::write(path("k.pem"), pair.signing_key.serialize_pem()).unwrap();
        std::fs::write(path("c.der"), pair.cert.der()).unwrap();
        std::fs::write(path("k.der"), pair.signing_key.serialize_der()).unwrap();
        let from_pem =
            load_or_generate(dir.path(), Some(&path("c.pem")), Some(&path("k.pem"))).unwrap();
        let from_der =
            load_or_generate(dir.path(), Some(&path("c.der")), Some(&path("k.der"))).unwrap();
        assert_eq!(from_pem.cert, from_der.cert);
        assert_eq!(from_pem.key.secret_der(), from_der.key.secret_der());
        assert_eq!(read_pinned_cert(&path("c.pem")).unwrap(), from_der.cert);
        server_config(from_pem).expect("a usable pair");
    }

    #[test]
    fn a_pem_file_without_what_it_should_hold_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n",
        )
        .unwrap();
        let e = read_pinned_cert(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = read_key(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.pem") && e.contains("no PEM private key"),
            "{e}"
        );
    }
}
