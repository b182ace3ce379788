//! `fo-echo`: the lab's test server. It answers every TCP line with `"{name} {line}\n"`
//! (keeping the connection open for more lines until EOF) and every UDP datagram with
//! `"{name} {datagram}"`, so a client sees which backend answered. It prints `ready` once
//! every socket is bound, and ends on SIGTERM (the default action: it keeps no state).
//!
//! ```text
//! fo-echo --name web-1 --tcp 0.0.0.0:80 --tcp [::]:80 --udp 0.0.0.0:53 --udp [::]:53
//! ```

use std::{
    io::{BufRead as _, BufReader, Write as _},
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::Arc,
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use socket2::{Domain, SockAddr, Socket, Type};

/// Command line.
#[derive(Parser)]
#[command(about = "Test server: echoes requests prefixed with its name")]
struct Cli {
    /// Put in front of every answer: names this backend.
    #[arg(long)]
    name: String,
    /// A TCP address to listen on (repeatable); IPv6 sockets are IPv6-only.
    #[arg(long)]
    tcp: Vec<SocketAddr>,
    /// A UDP address to serve (repeatable); IPv6 sockets are IPv6-only.
    #[arg(long)]
    udp: Vec<SocketAddr>,
    /// `ADDR=STATUS`: an HTTP endpoint answering every request with that status (a health
    /// endpoint, for HTTP checks; repeatable).
    #[arg(long)]
    http: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(
        !cli.tcp.is_empty() || !cli.udp.is_empty() || !cli.http.is_empty(),
        "nothing to serve: give --tcp ADDR, --udp ADDR or --http ADDR=STATUS"
    );
    for spec in &cli.http {
        let (addr, status) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--http {spec}: expected ADDR=STATUS"))?;
        let addr: SocketAddr = addr.parse()?;
        let status: u16 = status.parse()?;
        let listener = TcpListener::bind(addr)?;
        let name = cli.name.clone();
        std::thread::spawn(move || serve_http(&listener, &name, status));
    }
    // Bind everything before saying "ready", so the lab knows every socket is there.
    let listeners = cli
        .tcp
        .iter()
        .map(|&addr| Ok(TcpListener::from(bound(addr, Type::STREAM)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sockets = cli
        .udp
        .iter()
        .map(|&addr| {
            let socket = UdpSocket::from(bound(addr, Type::DGRAM)?);
            enable_pktinfo(&socket, addr.is_ipv6())
                .with_context(|| format!("cannot ask for destination addresses on {addr}"))?;
            Ok(socket)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let name: Arc<str> = cli.name.into();
    for listener in listeners {
        let name = Arc::clone(&name);
        std::thread::spawn(move || serve_tcp(&listener, &name));
    }
    for socket in sockets {
        let name = Arc::clone(&name);
        std::thread::spawn(move || serve_udp(&socket, &name));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    loop {
        std::thread::park();
    }
}

/// A socket bound to `addr`: IPv6-only for IPv6 so `0.0.0.0:P` and `[::]:P` can both be
/// bound; listening if it is a stream socket.
fn bound(addr: SocketAddr, ty: Type) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}: is another server there?"))?;
    if ty == Type::STREAM {
        socket.listen(1024)?;
    }
    Ok(socket)
}

fn serve_tcp(listener: &TcpListener, name: &Arc<str>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let name = Arc::clone(name);
                std::thread::spawn(move || echo_lines(stream, &name));
            }
            Err(e) => eprintln!("fo-echo {name}: accept: {e}"),
        }
    }
}

/// Answers every HTTP request with `status` (reads the head, answers, closes).
fn serve_http(listener: &TcpListener, name: &str, status: u16) {
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(&stream);
        let mut line = Vec::new();
        // The request head ends with an empty line.
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let body = format!("{name} {status}\n");
        let reply = format!(
            "HTTP/1.1 {status} Status\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = (&stream).write_all(reply.as_bytes());
    }
}

fn echo_lines(stream: TcpStream, name: &str) {
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&line);
        let request = text.trim_end_matches(['\r', '\n']);
        if writer
            .write_all(format!("{name} {request}\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0; 65536];
    loop {
        match recv_with_destination(socket, &mut buf) {
            Ok((len, peer, destination)) => {
                let reply = format!("{name} {}", String::from_utf8_lossy(&buf[..len]));
                if let Err(e) = send_from(socket, reply.as_bytes(), peer, destination) {
                    eprintln!("fo-echo {name}: reply to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("fo-echo {name}: receive: {e}"),
        }
    }
}

/// Room for one pktinfo control message, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Asks the kernel to report each datagram's destination address (`IP_PKTINFO`,
/// `IPV6_RECVPKTINFO`): on a wildcard socket it is the only way to answer from the address
/// the client used, e.g. a VIP on `lo` in direct-server-return mode.
fn enable_pktinfo(socket: &UdpSocket, ipv6: bool) -> std::io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that lives through the call, with its true size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Receives one datagram: its length, its sender and the address it was sent to.
fn recv_with_destination(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: every pointer in `msg` points at a live buffer of the length given with it, and
    // the kernel reports the sender's address length back through `name_len`.
    let (len, peer) = unsafe {
        SockAddr::try_init(|name, name_len| {
            msg.msg_name = name.cast();
            msg.msg_namelen = *name_len;
            let len = libc::recvmsg(socket.as_raw_fd(), &raw mut msg, 0);
            if len < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *name_len = msg.msg_namelen;
            Ok(len as usize)
        })
    }?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("datagram from a non-IP address"))?;
    let mut destination = None;
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // control messages; the CMSG_* walk stays within them, and payloads are read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = data.cast::<libc::in_pktinfo>().read_unaligned();
                    let addr = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    destination = Some(IpAddr::V4(addr));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    destination = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((len, peer, destination))
}

/// Sends `data` to `peer` from the source address `from` (when known).
fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<()> {
    let peer = SockAddr::from(peer);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = peer.as_ptr().cast_mut().cast();
    msg.msg_namelen = peer.len();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    match from {
        Some(IpAddr::V4(source)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            // SAFETY: `control` outlives `msg`'s use below.
            unsafe {
                put_control(
                    &mut msg,
                    &mut control,
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    info,
                )
            };
        }
        Some(IpAddr::V6(source)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: source.octets(),
                },
                ipi6_ifindex: 0,
            };
            // SAFETY: as above.
            unsafe {
                put_control(
                    &mut msg,
                    &mut control,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_PKTINFO,
                    info,
                )
            };
        }
        None => {}
    }
    // SAFETY: every pointer in `msg` points at a live buffer of the length given with it.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts one control message carrying `value` into `control` and points `msg` at it.
///
/// # Safety
/// `control` must stay alive and unmoved while `msg` is used.
unsafe fn put_control<T>(
    msg: &mut libc::msghdr,
    control: &mut Control,
    level: libc::c_int,
    kind: libc::c_int,
    value: T,
) {
    let payload = size_of::<T>() as libc::c_uint;
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the space check keeps the header and
    // payload inside `control`, which is aligned for cmsghdr.
    unsafe {
        let space = libc::CMSG_SPACE(payload) as usize;
        assert!(space <= control.0.len(), "control buffer too small");
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
        libc::CMSG_DATA(cmsg).cast::<T>().write_unaligned(value);
    }
}
