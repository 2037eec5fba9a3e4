//! hubsync's integration tests: one binary, a real Postgres database per test, the simulator
//! over real HTTP on loopback.

mod associations;
mod deploys;
mod end_to_end;
mod failures;
mod grants;
mod harness;
mod invariants;
mod limits;
mod migrations;
mod monitoring;
mod outages;
mod poison;
mod reconcile;
mod replies;
mod retention;
mod secrets;
mod simulator;
mod startup;
mod types;
mod wakeup;
