//! Which backends a service may use, and how flows are spread over them.

pub mod clock;
pub mod maglev;
pub mod state;
pub mod tiers;
