//! Kernel knobs the lab turns inside a namespace: sysctls, and the TX checksum offload of
//! veth devices (the `ethtool -K DEV tx off` ioctl, so no `ethtool` binary is needed).

use std::{net::UdpSocket, os::fd::AsRawFd as _};

use anyhow::{Context as _, ensure};

use super::netns::{Netns, run_in};

/// `ETHTOOL_GTXCSUM` from `linux/ethtool.h`: read the TX checksum offload state.
const ETHTOOL_GTXCSUM: u32 = 0x16;
/// `ETHTOOL_STXCSUM`: set it. The kernel clears every TX checksum feature (and TSO, which
/// depends on them), exactly as `ethtool -K DEV tx off` does.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from `linux/ethtool.h`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Writes sysctls inside `ns`. Keys are paths under `/proc/sys`, e.g.
/// `net/ipv4/conf/all/rp_filter`: `/proc/sys/net` shows the namespace of the thread that
/// opens it, so writing from a thread inside `ns` sets that namespace's values.
pub(crate) fn set_sysctls(ns: &Netns, settings: &[(String, &str)]) -> anyhow::Result<()> {
    run_in(ns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value)
                .with_context(|| format!("cannot set {path} = {value} in {}", ns.name()))?;
        }
        Ok(())
    })
}

/// Turns TX checksum offload off on `ifnames` inside `ns`. veth otherwise hands the peer a
/// packet whose TCP checksum is only partial; XDP forwarding does not complete it and the
/// receiver drops it (`TcpInCsumErrors`).
pub(crate) fn disable_tx_checksum(ns: &Netns, ifnames: &[&str]) -> anyhow::Result<()> {
    run_in(ns, || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("cannot open an ioctl socket")?;
        for ifname in ifnames {
            ethtool_value(&sock, ifname, ETHTOOL_STXCSUM, 0).with_context(|| {
                format!(
                    "cannot turn TX checksum offload off on {ifname} in {}",
                    ns.name()
                )
            })?;
        }
        Ok(())
    })
}

/// Whether TX checksum offload is on for `ifname` inside `ns` (`ethtool -k DEV`).
pub fn tx_checksum_enabled(ns: &Netns, ifname: &str) -> anyhow::Result<bool> {
    run_in(ns, || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("cannot open an ioctl socket")?;
        let on = ethtool_value(&sock, ifname, ETHTOOL_GTXCSUM, 0)
            .with_context(|| format!("cannot read TX checksum offload of {ifname}"))?;
        Ok(on != 0)
    })
}

/// One `SIOCETHTOOL` request carrying a `struct ethtool_value`; returns the value's data.
fn ethtool_value(sock: &UdpSocket, ifname: &str, cmd: u32, data: u32) -> anyhow::Result<u32> {
    ensure!(
        ifname.len() < libc::IFNAMSIZ,
        "interface name {ifname:?} is too long"
    );
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain data for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: `req` names the interface (NUL-terminated: the name is shorter than the zeroed
    // buffer) and points at `value`, both alive for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value.data)
}
