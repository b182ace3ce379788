//! The control plane between the `failover` CLI and the daemon: a Unix socket carrying one
//! JSON request line and one JSON response line per connection.
//!
//! - [`protocol`]: the request and response types (and the `status --json` format);
//! - [`server`]: the daemon's end: socket setup, peer checks, timeouts;
//! - [`client`]: the CLI's end;
//! - [`commands`] and [`render`]: the CLI subcommands and their text output.

pub mod client;
pub mod commands;
pub mod protocol;
pub mod render;
pub mod server;

#[cfg(test)]
mod tests;

pub use client::{ClientError, DEFAULT_SOCKET, DEFAULT_TIMEOUT, request};
pub use protocol::{
    BackendStatusView, CounterView, EventView, Explanation, Request, Response, ServiceStatus,
    Status, SwitchTimes, TrafficView,
};
pub use server::{ControlError, ControlListener, Handler, ServerOptions, serve, serve_with};
