//! The flow hash: MurmurHash3's 32-bit mixing over the flow's words.
//!
//! Deterministic and seedless on purpose: two load balancers with the same backends pick the
//! same backend for the same flow.

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hashes a flow: addresses (4 words each; IPv4 has three zero words), both ports in one
/// word, and the protocol.
#[inline(always)]
pub const fn flow_hash(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u32) -> u32 {
    let mut h = proto;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    finish(h ^ 40)
}
