//! The process's rustls crypto provider, installed once before any TLS use.
//!
//! rustls is built with `ring` only (no `aws-lc-rs`: it needs a C toolchain and adds a minute to
//! every clean build), so nothing selects a provider by itself: both the Redis driver's
//! `rustls::ClientConfig::builder()` and reqwest (the HTTPS client of the Entra ID credentials)
//! panic or fail without a process-wide default. [`ensure_crypto_provider`] installs `ring` as
//! that default the first time TLS might be used; when the embedding application installed a
//! provider of its own first, that one is kept.

use std::sync::Once;

/// Installs `ring` as rustls' process-wide crypto provider unless one is installed already.
/// Cheap after the first call.
pub fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err means another thread installed one in between: that one is used, fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// The certificates a TLS connection trusts: the PEM file `ca_file` if given, else the system's
/// roots (which honour `SSL_CERT_FILE`). Shared by the Redis connections we drive ourselves and
/// the PostgreSQL store.
///
/// # Errors
/// A message (without the file's content) when the file cannot be read or holds no valid
/// certificate, or when the system roots cannot be loaded.
pub fn root_store(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "CA file {} holds an invalid certificate: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(e) = found.errors.first() {
                return Err(format!("cannot load the system's root certificates: {e}"));
            }
            for cert in found.certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("a system root certificate is invalid: {e}"))?;
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed_and_calls_are_idempotent() {
        super::ensure_crypto_provider();
        super::ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
