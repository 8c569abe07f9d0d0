//! The dev hub's TLS: a rustls server configuration from PEM files, offering HTTP/1.1 only.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The configuration serving the certificate chain of `cert_file` with the key of `key_file`.
pub(crate) fn server_config(cert_file: &Path, key_file: &Path) -> io::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert_file, e))?;
    if certs.is_empty() {
        return Err(invalid(cert_file, "no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| invalid(key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(cert_file, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {error}", path.display()),
    )
}
