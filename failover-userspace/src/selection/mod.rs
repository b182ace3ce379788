//! Which backends a service may use, and how flows are spread over them.

pub mod maglev;
