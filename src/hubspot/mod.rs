//! Everything about HubSpot's API: paths per API edition, request and response shapes,
//! `classify` (every response into one outcome), and the HTTP client.
//! It knows nothing of the shared limiter either: callers take permits before they call.
//!
//! This module knows nothing of Postgres; the worker decides what an outcome means for rows.

pub(crate) mod client;
pub(crate) mod paths;
pub(crate) mod requests;

pub(crate) use crate::core::classify::{
    FailedInput, IdProperty, Outcome, RecordError, Reply, SentInput, Transport, WrittenInput,
    classify, classify_associations, classify_removals,
};
pub use client::{HubSpotClient, SetupReply};
pub use paths::Paths;
