//! Packet-handling pieces shared by the XDP programs: header layouts and bounds-checked
//! access ([`parse`]) and checksum arithmetic ([`csum`]). Maps live with each program.
#![no_std]

pub mod csum;
pub mod parse;
