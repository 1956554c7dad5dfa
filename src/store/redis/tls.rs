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

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed_and_calls_are_idempotent() {
        super::ensure_crypto_provider();
        super::ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
