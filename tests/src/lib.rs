//! Helpers shared by the end-to-end and packet tests: the network-namespace lab
//! ([`lab`]) and a packet-test rig that runs the real XDP object through
//! BPF_PROG_TEST_RUN ([`rig`]).

pub mod lab;
pub mod rig;
