//! What the Redis store knows of Microsoft Entra ID when the `entra-id` feature is off: a
//! credentials type that cannot be made outside this file, so `RedisOptions::credentials` is
//! always `None` and the code that would use it is never reached. The client refuses an `Endpoint` without a password
//! (Entra ID mode) before it gets here, naming the feature to enable.

use std::pin::Pin;

use futures_util::Stream;
use redis::{BasicAuth, RedisResult, StreamingCredentialsProvider};

/// The prefix of the messages about Entra ID (never produced in this build).
pub const MESSAGE_PREFIX: &str = "Microsoft Entra ID";

/// No credentials: this build has no Entra ID sign-in (the `entra-id` feature), and no value of
/// this type is ever made.
#[derive(Debug, Clone)]
pub struct EntraCredentials {
    _none: (),
}

impl StreamingCredentialsProvider for EntraCredentials {
    /// Never called (no value exists); an empty stream if it were.
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        Box::pin(futures_util::stream::empty())
    }
}
