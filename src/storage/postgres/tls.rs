//! TLS to PostgreSQL with rustls (no OpenSSL). The mode is libpq's
//! `sslmode` from the URL, the trusted CA libpq's `sslrootcert` from the URL
//! or `--database-ca-file`; tokio-postgres knows only some of these
//! parameters, so [`split_url`] takes them out before it parses the rest.
//!
//! | `sslmode` | TLS | certificate checked against the CA | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` (default) | if the server offers it | no | no |
//! | `require` | always | no | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! `verify-ca` and `verify-full` trust the CA file when one is given, else
//! the Mozilla root store (webpki-roots), which covers managed services whose
//! certificates chain to a public CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::storage::StorageError;

/// libpq's `sslmode` values that this client supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<Self, String> {
        Ok(match v {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not supported: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// What tokio-postgres itself is told: whether TLS is tried and required.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as D;
        match self {
            Self::Disable => D::Disable,
            Self::Prefer => D::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => D::Require,
        }
    }
}

/// The TLS parameters of a database URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlTls {
    pub mode: Option<SslMode>,
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (URL form
/// `postgres://…?sslmode=verify-full` or key-value form `host=… sslmode=…`)
/// and returns the rest for tokio-postgres.
pub fn split_url(url: &str) -> Result<(String, UrlTls), String> {
    let mut tls = UrlTls::default();
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => tls.mode = Some(SslMode::parse(value)?),
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, &percent_decode(v)?)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        let taken = match word.split_once('=') {
            Some((k, v)) => take(k.trim(), v.trim_matches('\''))?,
            None => false,
        };
        if !taken {
            kept.push(word);
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in `{v}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{v}` is not UTF-8"))
}

/// The connector for `mode`, trusting the certificates of `ca_file` (PEM)
/// or, without one, the Mozilla root store.
pub fn connector(mode: SslMode, ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StorageError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::io("TLS set-up", e))?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(ca_file)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| StorageError::io("TLS set-up", e))?;
            let builder = builder.dangerous();
            if mode == SslMode::VerifyFull {
                builder.with_custom_certificate_verifier(verifier)
            } else {
                builder.with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
            }
            .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, StorageError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let context = || format!("cannot read the database CA file {}", path.display());
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| StorageError::io(context(), e))? {
        let cert = cert.map_err(|e| StorageError::io(context(), e))?;
        store
            .add(cert)
            .map_err(|e| StorageError::io(context(), e))?;
    }
    if store.is_empty() {
        return Err(StorageError::unavailable(format!(
            "the database CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted, but any certificate is accepted (as
/// libpq does); the handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, tls) = split_url(
            "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=a");
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));

        let (rest, tls) = split_url("postgresql://db/x?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgresql://db/x", Some(SslMode::Disable))
        );

        let (rest, tls) = split_url("host=db dbname=x sslmode=require user=u").unwrap();
        assert_eq!(rest, "host=db dbname=x user=u");
        assert_eq!(tls.mode, Some(SslMode::Require));

        let (rest, tls) = split_url("postgres://db/x").unwrap();
        assert_eq!((rest.as_str(), tls), ("postgres://db/x", UrlTls::default()));

        for bad in [
            "postgres://db/x?sslmode=allow",
            "host=db sslmode=verify_full",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
        assert!(split_url("postgres://db/x?sslrootcert=%zz").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(connector(SslMode::VerifyFull, Some(&empty)).is_err());
        assert!(connector(SslMode::VerifyFull, Some(&dir.path().join("missing"))).is_err());
        assert!(connector(SslMode::VerifyFull, None).is_ok());
        assert!(connector(SslMode::Require, None).is_ok());
    }
}
