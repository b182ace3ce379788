//! failover: the userspace half of an XDP L4 load balancer with fast, safe failover.
//!
//! - [`cli`] and [`daemon`]: the `failover` binary's command line and `failover run`;
//! - [`health`] and [`brain`]: probes, and what they decide (states, tiers, map writes);
//! - [`config`]: the TOML file, parsed and validated into typed values;
//! - [`selection`]: Maglev tables (and, later, tier selection);
//! - [`loader`]: loads the XDP object, sizes its maps from the config, attaches it;
//! - [`dataplane`]: the only writer of the BPF maps, and the reader of their counters;
//! - [`layout`]: ids, table slots and map sizes derived from the config;
//! - [`program`]: writes a desired state (backends, tables) through the dataplane;
//! - [`pins`]: pinned maps and link, so forwarding survives restarts;
//! - [`control`] and [`metrics`]: the CLI's socket and the Prometheus endpoint;
//! - [`neighbor`]: resolves backend and next-hop MAC addresses from the kernel.

pub mod brain;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod layout;
pub mod loader;
pub mod metrics;
pub mod neighbor;
pub mod pins;
pub mod program;
pub mod selection;
