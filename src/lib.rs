//! Jetway: a real-time air-ticket booking hub, JSON-RPC 2.0 over WebSocket.
//!
//! Modules, from the wire inwards, in layers: each uses only modules listed after
//! it (the layers, and one `booking.hold` file by file, in docs/architecture.md;
//! `tests/architecture.rs` checks the rule):
//!
//! - [`server`]: HTTP routes, static files, the WebSocket upgrade, each
//!   connection's task, dispatch to the use cases, the abuse limits
//!   ([`server::limits`]: request rate, login backoff, and the listener's cap per
//!   address and handshake timeout) and the `/metrics` page;
//! - [`app`]: one method per use case, orchestrating everything below: parsed
//!   params in, a typed result or an `AppError` out;
//! - [`config`]: every flag, the abuse limits included;
//! - [`inventory`]: every flight's seat map in memory, its version and change feed;
//! - [`protocol`]: the JSON-RPC envelope, method params parsed into domain values
//!   (card data refused there), typed results and their one encoding, error
//!   reasons (pure);
//! - [`store`]: the durable store behind a trait (sled; or, with the `etcd` feature,
//!   an etcd cluster shared by several nodes, with its change feed), and the group
//!   commit;
//! - [`fanout`]: per-connection bounded outbound queues and the user registry;
//! - [`payments`]: the payment-gateway trait, the sandbox gateway and Stripe;
//! - [`domain`]: flights, seats, bookings and their state machine, fares and refunds
//!   (pure, no I/O);
//! - [`metrics`]: counters and histograms (a leaf: it uses no other module);
//! - [`backup`]: the `jetway backup` command, a client of a running server.
//!
//! A request flows: the connection's reader parses a text frame ([`protocol`]) and
//! hands it to `server::dispatch`, which looks the method up in the one list of
//! methods ([`protocol::params::Method`]), checks who may call it, parses the params
//! and calls the use case in [`app`], encodes its result ([`protocol::results`]) or
//! maps its error, then records the outcome in [`metrics`]. A
//! seat-changing use case checks the rules in [`domain`] with the flight's working
//! map in [`inventory`] locked, and changes seats the one way (`app::seat_change`):
//! one atomic batch to the [`store`] with the flight's next version, the working map
//! updated and a "publish" action enqueued with the committer, then it waits. The
//! committer syncs every pending write with one fsync, runs the actions in order
//! (each advances the flight's live map, encodes its `seats.changed` once and queues
//! it, with `booking.updated`, on the connections of the users the change concerns,
//! the requester among them), wakes the waiters, whose replies then go out, and then
//! queues the push for every other watcher.
//!
//! On etcd (`--store etcd`) the batch is one transaction that commits only if the
//! flight's version is still the one decided on (else the use case decides again on
//! the newer map); every node follows the committed changes in revision order and
//! applies them to its maps, replay buffers and connections (`app::cluster`) before
//! the writer's reply goes out. See docs/cluster.md.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod backup;
pub mod config;
pub mod domain;
pub mod fanout;
pub mod inventory;
pub mod metrics;
pub mod payments;
pub mod protocol;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::{start, Running};
