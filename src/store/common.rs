//! Helpers shared by the stores: TLS trust (the process's rustls crypto provider and the roots a
//! TLS connection trusts), the error of a closed store, an error with its causes for messages,
//! and the conversions of a lease duration into the units each store's wire takes.
//!
//! What is not here, and why: each store's retry after a dropped connection has its own shape
//! (Redis: one retry on a fresh connection of its home runtime, [`super::redis`]'s `shared`;
//! PostgreSQL: one retry on a new connection carrying the acquire's retry flag; etcd: fail-over
//! between members with a token refresh; SQLite: none, a busy wait on the file lock), so each
//! keeps it.
//!
//! With some stores' features off, the helpers only the others use are unused: allowed then.
#![cfg_attr(
    not(all(
        feature = "redis",
        feature = "sqlite",
        feature = "postgres",
        feature = "etcd"
    )),
    allow(dead_code)
)]

#[cfg(feature = "network")]
use std::sync::Once;
use std::time::Duration;

use crate::error::LeaseError;

/// Installs `ring` as rustls' process-wide crypto provider unless one is installed already.
/// Cheap after the first call.
///
/// rustls is built with `ring` only (no `aws-lc-rs`: it needs a C toolchain and adds a minute to
/// every clean build), so nothing selects a provider by itself: the Redis driver's
/// `rustls::ClientConfig::builder()`, tokio-postgres-rustls and reqwest (the HTTPS client of the
/// Entra ID credentials and of etcd) panic or fail without a process-wide default. This installs
/// `ring` as that default the first time TLS might be used; when the embedding application
/// installed a provider of its own first, that one is kept.
#[cfg(feature = "network")]
pub(crate) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err means another thread installed one in between: that one is used, fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// The certificates a TLS connection trusts: the PEM file `ca_file` if given, else the system's
/// roots (which honour `SSL_CERT_FILE`). Used by the Redis connections we drive ourselves, the
/// PostgreSQL store (`verify-full`) and the etcd store (`etcds://`).
///
/// # Errors
/// A message (without the file's content) when the file cannot be read or holds no valid
/// certificate, or when the system roots cannot be loaded.
#[cfg(feature = "network")]
pub(crate) fn root_store(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::RootCertStore, String> {
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

/// The error of an operation on a closed client or store (Redis, PostgreSQL, etcd and the
/// client itself; SQLite names its file instead).
pub(crate) fn closed_error() -> LeaseError {
    LeaseError::Config("this lease client is closed; create a new one".into())
}

/// An error with its causes, `a: b: c` (a cause whose text the message already holds is left
/// out).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Whole milliseconds of `d`, rounded down, saturating: a time to live counted by the server's
/// clock (Redis `PEXPIRE`, which the Redis store raises to at least 1 ms).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// [`millis`] as a SQL `bigint` (PostgreSQL: `now() + ms`), saturating.
pub(crate) fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whole milliseconds of `d`, rounded up, saturating: a deadline stored as `now + ms` (SQLite),
/// so that a non-zero duration never stores an expired lease.
pub(crate) fn millis_ceil_i64(d: Duration) -> i64 {
    i64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// Whole seconds of `d`, rounded up, at least 1: etcd's TTLs are whole seconds, and the server
/// must never expire a lease before its duration.
pub(crate) fn secs_ceil_i64(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_is_installed_and_calls_are_idempotent() {
        ensure_crypto_provider();
        ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(secs_ceil_i64(Duration::from_millis(1)), 1);
        assert_eq!(secs_ceil_i64(Duration::from_millis(200)), 1);
        assert_eq!(secs_ceil_i64(Duration::from_secs(1)), 1);
        assert_eq!(secs_ceil_i64(Duration::from_millis(1_001)), 2);
        assert_eq!(secs_ceil_i64(Duration::from_secs(30)), 30);
    }

    #[test]
    fn milliseconds_round_as_each_store_needs() {
        let d = Duration::from_micros(1_500);
        assert_eq!(millis(d), 1);
        assert_eq!(millis_i64(d), 1);
        assert_eq!(millis_ceil_i64(d), 2);
        assert_eq!(millis(Duration::from_micros(500)), 0);
        assert_eq!(millis_ceil_i64(Duration::from_nanos(1)), 1);
        assert_eq!(millis_ceil_i64(Duration::ZERO), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_i64(Duration::MAX), i64::MAX);
        assert_eq!(millis_ceil_i64(Duration::MAX), i64::MAX);
    }
}
