//! (being written)
/// Lease.
#[derive(Debug)]
pub struct Lease;
