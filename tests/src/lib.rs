//! Helpers shared by the end-to-end and packet tests: the network-namespace lab
//! ([`lab`]), the real daemon run inside it ([`daemon`]), the project's auxiliary XDP
//! programs attached in it ([`xdp`]), and a packet-test rig that runs the real XDP object
//! through BPF_PROG_TEST_RUN ([`rig`]).

pub mod checks_bench;
pub mod daemon;
pub mod drill;
pub mod lab;
pub mod rig;
pub mod xdp;
