//! (being written)
/// Client options.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions;
/// Lease options.
#[derive(Debug, Clone, Default)]
pub struct LeaseOptions;
/// Client.
#[derive(Debug)]
pub struct LeaseClient;
/// Outcome.
#[derive(Debug)]
pub enum TryAcquire {}
