//! The pure core: what hubsync decides, with no I/O. Nothing here touches the database, the
//! network, the clock or the config file; the shell around it (`db`, `hubspot`, `worker`,
//! `cli`) reads the world, calls these functions, and writes their answers back.
//!
//! - [`vocabulary`]: property types, merge rules, object types, declared properties.
//! - [`values`]: checking and serialising one value the way HubSpot accepts it.
//! - [`event`]: turning one outbox event into contributions, or a refusal.
//! - [`merge`]: merging one contribution into a property, order-proof.
//! - [`fold`]: applying an object's events to its state, each whole or not at all.
//! - [`classify`]: what one HubSpot reply means.
//! - [`portal`]: the portal's time zone, where its day ends.
//! - [`retry`]: how long to wait before trying again.
//! - [`dlq`]: the categories a row is dead-lettered under.

pub mod classify;
pub mod dlq;
pub mod event;
pub mod fold;
pub mod merge;
pub mod portal;
pub mod retry;
pub mod values;
pub mod vocabulary;
