//! Half-open TCP checks (`half_open = true`): a SYN to the target, and its answer read
//! from a raw socket. A SYN-ACK means up (this host's kernel, which knows no connection on
//! that port, answers it with a reset, so the backend forgets the handshake at once); a
//! reset means refused; an ICMP error (host or port unreachable) is read from the socket's
//! error queue; no answer within the timeout is a timeout. It is what a connect check
//! learns, for a fraction of the cost: no socket, no file descriptor, no connection state
//! on this host per check, one packet sent instead of two, and the backend's application
//! sees nothing (the kernel completes handshakes before any `accept`).
//!
//! All half-open targets share one task and one raw socket per address family
//! ([`Engine`]): it sends the SYNs that fall due within [`COALESCE`] of each other in one
//! `sendmmsg`, and reads answers in batches (`recvmmsg`). The raw socket sees every TCP
//! packet this host receives; a socket filter keeps only those to the source ports the
//! engine owns ([`PORTS`] per family, reserved by binding TCP sockets that never listen,
//! so nothing else on this host uses them). A SYN is matched to its answer by address,
//! ports and sequence number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::scheduler::{Report, Schedule, jittered, sleep_until};
use super::{Outcome, ProbeResult, refusable};

/// SYNs due within this much of the earliest are sent with it, in one system call.
const COALESCE: Duration = ROUND;
/// The engine works in rounds (read answers, expire deadlines, send what is due), timed
/// rounds at most this often: every round is a wake-up, and the answers to one batch of
/// SYNs trickle in over a few hundred microseconds. While the next round is at most this
/// far (SYNs fall due continuously: many targets), answers wait for it instead of waking
/// the engine, so a latency may read up to this much too long and a refusal be seen up to
/// this much later; otherwise (few targets) an answer starts a round at once.
const ROUND: Duration = Duration::from_millis(5);
/// Results that are all "up" are handed to the brain at most this often, in one batch
/// (each hand-over wakes the brain's thread); any other result is handed over in the
/// round that finds it. A result carries the time it was found, not the time it is
/// handed over.
const REPORT_EVERY: Duration = Duration::from_millis(20);
/// At most this many SYNs per wake-up; more wait a millisecond, so a burst (every target
/// at start) cannot overflow the interface's queue.
const BURST: usize = 256;
/// Answers read per system call.
const BATCH: usize = 64;
/// Source ports per family; a target's probes take turns among them.
const PORTS: usize = 4;
/// A SYN: 20 bytes of TCP header and a 4-byte MSS option, as any client sends.
const SYN_LEN: usize = 24;
/// Bytes of an answer kept: an IPv4 header with options and the TCP header's first 14.
const ANSWER_LEN: usize = 80;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A half-open target, as the scheduler numbers it.
#[derive(Debug, Clone)]
pub(super) struct SynTarget {
    /// The scheduler's index, used in reports.
    pub index: usize,
    /// Address and port probed.
    pub addr: SocketAddr,
    /// How long a SYN waits for its answer.
    pub timeout: Duration,
    /// The first schedule.
    pub schedule: Schedule,
}

/// What the scheduler asks of a running engine; the number is the engine's own index.
#[derive(Debug)]
pub(super) enum Command {
    /// Probe now (unless a SYN is out).
    Now(usize),
    /// Use this schedule from now on; a shorter interval cuts the current wait short.
    Schedule(usize, Schedule),
}

/// The raw sockets of the daemon, opened on first use and kept across reloads, so a
/// reload never finds them missing (no privilege lost since start is needed again).
#[derive(Debug, Default, Clone)]
pub struct RawSockets {
    open: Arc<Mutex<[Option<Arc<RawTcp>>; 2]>>,
}

impl RawSockets {
    /// The socket for `v6`'s family, opened now if it is not yet.
    pub(super) fn get(&self, v6: bool) -> io::Result<Arc<RawTcp>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut open[usize::from(v6)];
        if let Some(raw) = slot {
            return Ok(raw.clone());
        }
        let raw = Arc::new(RawTcp::open(v6).map_err(|e| {
            let family = if v6 { "IPv6" } else { "IPv4" };
            io::Error::new(
                e.kind(),
                format!(
                    "half-open checks need a raw {family} TCP socket, which failed ({e}): run the \
                     daemon as root or with CAP_NET_RAW, or set half_open = false"
                ),
            )
        })?);
        *slot = Some(raw.clone());
        Ok(raw)
    }
}

/// A raw TCP socket of one family, with the source ports it owns.
#[derive(Debug)]
pub(super) struct RawTcp {
    socket: Socket,
    ports: Vec<u16>,
    /// Bound, never listening: they keep the ports from anyone else on this host.
    _reserved: Vec<Socket>,
}

impl RawTcp {
    fn open(v6: bool) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let any: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut ports = Vec::with_capacity(PORTS);
        let mut reserved = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            if v6 {
                s.set_only_v6(true)?;
            }
            s.bind(&any.into())?;
            let port = s
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("a bound TCP socket has no port"))?;
            ports.push(port);
            reserved.push(s);
        }
        let raw = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
        raw.set_nonblocking(true)?;
        raw.attach_filter(&filter(v6, &ports))?;
        if v6 {
            // The kernel computes the TCP checksum (it knows the source address).
            setsockopt(&raw, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16)?;
            setsockopt(&raw, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)?;
        } else {
            setsockopt(&raw, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
            // Don't fragment, as TCP sends: the IP ID is then 0 rather than drawn from
            // the kernel's shared generator for every SYN.
            setsockopt(
                &raw,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )?;
        }
        // Room for a burst of answers; the kernel caps it at net.core.rmem_max.
        let _ = raw.set_recv_buffer_size(1 << 20);
        Ok(Self {
            socket: raw,
            ports,
            _reserved: reserved,
        })
    }

    /// Sends `packets` (SYN, destination) with as few system calls as it can; returns how
    /// many went out, and the error that stopped the rest.
    fn send(&self, packets: &[[u8; SYN_LEN]], to: &[&SockAddr]) -> (usize, Option<io::Error>) {
        // The kernel only reads the buffers and addresses of a send.
        let mut iovs: Vec<libc::iovec> = packets
            .iter()
            .map(|p| iovec(p.as_ptr().cast_mut(), p.len()))
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = to
            .iter()
            .zip(iovs.iter_mut())
            .map(|(to, iov)| mmsghdr(to.as_ptr().cast_mut().cast(), to.len(), iov))
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: every header points at a live buffer and address for the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return (sent, Some(io::Error::last_os_error()));
            }
            if n == 0 {
                return (sent, Some(io::Error::from(io::ErrorKind::WouldBlock)));
            }
            sent += n as usize;
        }
        (sent, None)
    }
}

fn iovec(base: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    }
}

/// One message of a `sendmmsg`/`recvmmsg`: one buffer, an address, no control data.
fn mmsghdr(
    name: *mut libc::c_void,
    name_len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no control).
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_name = name;
    hdr.msg_namelen = name_len;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    libc::mmsghdr {
        msg_hdr: hdr,
        msg_len: 0,
    }
}

fn setsockopt(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value is a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A classic BPF filter keeping TCP packets to one of `ports`. An IPv4 raw socket sees
/// the IP header first; an IPv6 one starts at the TCP header.
fn filter(v6: bool, ports: &[u16]) -> Vec<SockFilter> {
    const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH: X = 4 * (pkt[k] & 0xf)
    const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let mut f = Vec::with_capacity(ports.len() + 4);
    if v6 {
        f.push(SockFilter::new(LD_H_ABS, 0, 0, 2));
    } else {
        f.push(SockFilter::new(LDX_B_MSH, 0, 0, 0));
        f.push(SockFilter::new(LD_H_IND, 0, 0, 2));
    }
    for (i, &port) in ports.iter().enumerate() {
        // On a match, jump over the remaining tests and the reject to the accept.
        let to_accept = (ports.len() - i) as u8;
        f.push(SockFilter::new(JEQ_K, to_accept, 0, u32::from(port)));
    }
    f.push(SockFilter::new(RET_K, 0, 0, 0));
    f.push(SockFilter::new(RET_K, 0, 0, ANSWER_LEN as u32));
    f
}

/// The SYN from `sport` to `dst` with sequence number `isn`. For IPv4 the checksum is
/// computed from `src`; for IPv6 the kernel fills it in.
fn syn(src: Option<Ipv4Addr>, dst: SocketAddr, sport: u16, isn: u32) -> [u8; SYN_LEN] {
    let mut p = [0u8; SYN_LEN];
    p[0..2].copy_from_slice(&sport.to_be_bytes());
    p[2..4].copy_from_slice(&dst.port().to_be_bytes());
    p[4..8].copy_from_slice(&isn.to_be_bytes());
    p[12] = ((SYN_LEN / 4) as u8) << 4;
    p[13] = TCP_SYN;
    p[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // MSS 1460.
    p[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    if let (Some(src), IpAddr::V4(dst)) = (src, dst.ip()) {
        let mut sum = 0u32;
        for chunk in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
            sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
        }
        sum += u32::from(libc::IPPROTO_TCP as u16) + SYN_LEN as u32;
        for chunk in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    p
}

/// What an answer says, once matched to its SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    SynAck,
    Reset,
}

/// A TCP segment read from the raw socket: (peer port, our port, ack number, flags).
fn parse_tcp(v6: bool, packet: &[u8]) -> Option<(u16, u16, u32, u8)> {
    let tcp = if v6 {
        packet
    } else {
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let tcp = tcp.get(..14)?;
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
        u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        tcp[13],
    ))
}

/// What an answer's flags mean (a SYN-ACK or a reset), if anything.
fn answer(flags: u8) -> Option<Answer> {
    if flags & TCP_RST != 0 {
        Some(Answer::Reset)
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        Some(Answer::SynAck)
    } else {
        None
    }
}

/// A SYN that is out.
#[derive(Debug, Clone, Copy)]
struct Flight {
    isn: u32,
    port: u16,
    sent: Instant,
}

#[derive(Debug)]
struct Probe {
    target: SynTarget,
    /// The source address of IPv4 SYNs (for the checksum), looked up again after a
    /// probe that was not up (a route may have changed).
    source: Option<Ipv4Addr>,
    /// Bumped whenever the next send is rescheduled, so older calendar entries are
    /// skipped.
    epoch: u32,
    /// The next probe of the same address and port, if any (see [`Engine::by_peer`]).
    same_peer: Option<usize>,
    /// When the next SYN is due, while none is out.
    due: Option<Instant>,
    flight: Option<Flight>,
    /// The target as a socket address for `sendmmsg` (port 0: raw sockets take none).
    dest: SockAddr,
    /// Which of the family's ports the next SYN uses.
    turn: usize,
}

/// Every half-open target of one generation, probed from one task.
pub(super) struct Engine {
    v4: Option<Arc<RawTcp>>,
    v6: Option<Arc<RawTcp>>,
    probes: Vec<Probe>,
    /// The first engine index by (address, port) probed; others with the same are
    /// chained through [`Probe::same_peer`].
    by_peer: HashMap<(IpAddr, u16), usize, BuildHasherDefault<PeerHasher>>,
    sends: Calendar,
    deadlines: Deadlines,
    /// A send or receive failed: the error queue may hold ICMP errors about our SYNs.
    errors_pending: bool,
    /// Buffers for reading answers, taken while in use.
    rx: Option<Box<RxBuffers>>,
    /// No sends before this (after a full burst, or a full send buffer).
    paced: Option<Instant>,
    seed: u64,
    generation: u64,
    finished: Vec<(usize, ProbeResult)>,
}

impl Engine {
    /// An engine for `targets`, with the raw sockets of the families they use.
    pub(super) fn new(
        targets: Vec<SynTarget>,
        sockets: &RawSockets,
        generation: u64,
    ) -> io::Result<Self> {
        let v4 = targets
            .iter()
            .any(|t| t.addr.is_ipv4())
            .then(|| sockets.get(false))
            .transpose()?;
        let v6 = targets
            .iter()
            .any(|t| t.addr.is_ipv6())
            .then(|| sockets.get(true))
            .transpose()?;
        let now = Instant::now();
        let mut by_peer = HashMap::default();
        let mut sends = Calendar::new(now);
        let probes = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let dest = SockAddr::from(SocketAddr::new(target.addr.ip(), 0));
                let same_peer = by_peer.insert((target.addr.ip(), target.addr.port()), i);
                sends.push(now, i, 0);
                Probe {
                    target,
                    source: None,
                    epoch: 0,
                    same_peer,
                    due: Some(now),
                    flight: None,
                    dest,
                    turn: i,
                }
            })
            .collect::<Vec<_>>();
        Ok(Self {
            v4,
            v6,
            deadlines: Deadlines::default(),
            probes,
            by_peer,
            sends,
            errors_pending: false,
            rx: Some(Box::new(RxBuffers::new())),
            paced: None,
            seed: random_seed(generation),
            generation,
            finished: Vec::new(),
        })
    }

    /// Probes until `commands` closes (the scheduler's handle was dropped) or `reports`
    /// does.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        reports: mpsc::Sender<Report>,
    ) {
        let mut last_round = Instant::now();
        let mut last_report = last_round;
        loop {
            let next_round = last_round + ROUND;
            let work = self.next_wake().map(|at| at.max(next_round));
            let report = (!self.finished.is_empty()).then_some(last_report + REPORT_EVERY);
            let wake = [work, report].into_iter().flatten().min();
            // Answers wake the engine only if no round comes soon anyway.
            let listen = wake.is_none_or(|at| at > next_round);
            let (v4, v6) = (self.v4.clone(), self.v6.clone());
            // Answers that wake the engine are read at once: no round was coming soon.
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.apply(command, Instant::now());
                    while let Ok(command) = commands.try_recv() {
                        self.apply(command, Instant::now());
                    }
                }
                () = readable(v4.as_deref()), if listen => {}
                () = readable(v6.as_deref()), if listen => {}
                () = sleep_until(wake) => {}
            }
            // Read in every round, whatever woke it: a deadline must not expire a SYN
            // whose answer is waiting in the socket.
            self.read(false);
            self.read(true);
            last_round = Instant::now();
            self.expire(last_round);
            self.send_due(last_round);
            let urgent = self.finished.iter().any(|(_, r)| !r.outcome.is_up());
            if !urgent && last_round < last_report + REPORT_EVERY {
                continue;
            }
            last_report = last_round;
            for (target, result) in self.finished.drain(..) {
                let report = Report {
                    generation: self.generation,
                    target,
                    result,
                };
                if reports.send(report).await.is_err() {
                    return;
                }
            }
        }
    }

    fn next_wake(&mut self) -> Option<Instant> {
        // A deadline whose SYN was answered is no reason to wake up.
        let probes = &self.probes;
        self.deadlines
            .drop_answered(|i, isn| probes[i].flight.is_some_and(|f| f.isn == isn));
        let send = (self.sends.first()).map(|t| self.paced.map_or(t, |p| t.max(p)));
        [send, self.deadlines.first()].into_iter().flatten().min()
    }

    fn apply(&mut self, command: Command, now: Instant) {
        match command {
            Command::Now(i) => {
                if self.probes.get(i).is_some_and(|p| p.flight.is_none()) {
                    self.schedule(i, now);
                }
            }
            Command::Schedule(i, schedule) => {
                let Some(p) = self.probes.get_mut(i) else {
                    return;
                };
                p.target.schedule = schedule;
                let left = p.due.map(|due| due.saturating_duration_since(now));
                if left.is_some_and(|left| schedule.interval < left) {
                    let at =
                        now + jittered(schedule.interval, schedule.jitter_percent, &mut self.seed);
                    self.schedule(i, at);
                }
            }
        }
    }

    /// Makes probe `i`'s next SYN due at `at`.
    fn schedule(&mut self, i: usize, at: Instant) {
        let p = &mut self.probes[i];
        p.epoch = p.epoch.wrapping_add(1);
        p.due = Some(at);
        self.sends.push(at, i, p.epoch);
    }

    /// Ends probe `i`'s flight with `outcome` and schedules its next SYN.
    fn finish(&mut self, i: usize, outcome: Outcome, now: Instant) {
        if let Some(flight) = self.probes[i].flight.take() {
            self.conclude(i, outcome, flight.sent, now);
        }
    }

    /// Reports the outcome of probe `i` (started at `sent`) and schedules its next SYN.
    fn conclude(&mut self, i: usize, outcome: Outcome, sent: Instant, now: Instant) {
        let p = &mut self.probes[i];
        if !outcome.is_up() {
            p.source = None;
        }
        let result = ProbeResult {
            outcome,
            latency: now.saturating_duration_since(sent),
            at: now,
        };
        self.finished.push((p.target.index, result));
        let s = p.target.schedule;
        let at = now + jittered(s.interval, s.jitter_percent, &mut self.seed);
        self.schedule(i, at);
    }

    /// The probe whose SYN went from `port` to `peer` with sequence number `isn`.
    fn matching(&self, peer: (IpAddr, u16), port: u16, isn: u32) -> Option<usize> {
        let mut next = self.by_peer.get(&peer).copied();
        while let Some(i) = next {
            let p = &self.probes[i];
            if p.flight.is_some_and(|f| f.port == port && f.isn == isn) {
                return Some(i);
            }
            next = p.same_peer;
        }
        None
    }

    fn expire(&mut self, now: Instant) {
        while let Some((i, isn)) = self.deadlines.pop_due(now) {
            if self.probes[i].flight.is_some_and(|f| f.isn == isn) {
                let after = self.probes[i].target.timeout;
                self.finish(i, Outcome::Timeout { after }, now);
            }
        }
    }

    fn next_isn(&mut self) -> u32 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 16) as u32
    }

    /// Sends the SYNs due by `now` (and those due within [`COALESCE`]), at most
    /// [`BURST`].
    fn send_due(&mut self, now: Instant) {
        if self.paced.is_some_and(|p| p > now) {
            return;
        }
        self.paced = None;
        let horizon = now + COALESCE;
        let mut batches: [Vec<(usize, [u8; SYN_LEN])>; 2] = [Vec::new(), Vec::new()];
        let mut due = Vec::new();
        self.sends.take(horizon, BURST, &mut due);
        if due.len() == BURST {
            self.paced = Some(now + Duration::from_millis(1));
        }
        for (i, epoch) in due {
            let i = i as usize;
            let p = &self.probes[i];
            if p.epoch != epoch || p.flight.is_some() {
                continue;
            }
            let addr = p.target.addr;
            let v6 = addr.is_ipv6();
            let Some(raw) = (if v6 { &self.v6 } else { &self.v4 }).clone() else {
                continue;
            };
            let source = match (p.source, addr) {
                (Some(s), _) => Some(s),
                (None, SocketAddr::V4(_)) => match source_for(addr) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let outcome = refusable("connecting to", addr)(e).into_outcome();
                        self.conclude(i, outcome, now, now);
                        continue;
                    }
                },
                (None, SocketAddr::V6(_)) => None,
            };
            let isn = self.next_isn();
            let p = &mut self.probes[i];
            p.source = source;
            let port = raw.ports[p.turn % raw.ports.len()];
            p.turn = p.turn.wrapping_add(1);
            let packet = syn(source, addr, port, isn);
            self.start(i, isn, port, now);
            batches[usize::from(v6)].push((i, packet));
        }
        for (v6, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                self.send_batch(v6 == 1, batch, now);
            }
        }
    }

    /// Marks probe `i` as having a SYN out.
    fn start(&mut self, i: usize, isn: u32, port: u16, now: Instant) {
        let p = &mut self.probes[i];
        p.due = None;
        p.flight = Some(Flight {
            isn,
            port,
            sent: now,
        });
        self.deadlines.push(p.target.timeout, now, i, isn);
    }

    fn send_batch(&mut self, v6: bool, batch: Vec<(usize, [u8; SYN_LEN])>, now: Instant) {
        let Some(raw) = (if v6 { &self.v6 } else { &self.v4 }).clone() else {
            return;
        };
        let packets: Vec<[u8; SYN_LEN]> = batch.iter().map(|(_, p)| *p).collect();
        let mut from = 0;
        let mut retried = false;
        while from < packets.len() {
            let (sent, error) = {
                let to: Vec<&SockAddr> = batch[from..]
                    .iter()
                    .map(|(i, _)| &self.probes[*i].dest)
                    .collect();
                raw.send(&packets[from..], &to)
            };
            from += sent;
            let Some(error) = error else { break };
            if error.kind() == io::ErrorKind::WouldBlock {
                // The send buffer is full: the rest go again in a millisecond.
                self.paced = Some(now + Duration::from_millis(1));
                for &(i, ..) in &batch[from..] {
                    self.probes[i].flight = None;
                    self.schedule(i, now);
                }
                return;
            }
            if sent > 0 {
                retried = false;
            }
            // An ICMP error about an earlier SYN can surface on a later send: try the SYN
            // once more before taking the error as its own.
            self.errors_pending = true;
            if !retried {
                retried = true;
                continue;
            }
            let (i, ..) = batch[from];
            let addr = self.probes[i].target.addr;
            let outcome = refusable("sending a SYN to", addr)(error).into_outcome();
            self.finish(i, outcome, now);
            from += 1;
            retried = false;
        }
    }

    /// Reads every answer waiting on the family's socket, and its error queue.
    fn read(&mut self, v6: bool) {
        let Some(raw) = (if v6 { &self.v6 } else { &self.v4 }).clone() else {
            return;
        };
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let RxBuffers { bufs, names } = &mut *rx;
        loop {
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| iovec(b.as_mut_ptr(), b.len()))
                .collect();
            let name_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(names.iter_mut())
                .map(|(iov, name)| {
                    mmsghdr((name as *mut libc::sockaddr_storage).cast(), name_len, iov)
                })
                .collect();
            // SAFETY: every header points at live buffers for the call.
            let n = unsafe {
                libc::recvmmsg(
                    raw.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                // A pending ICMP error is reported once, by whichever call comes first;
                // the error queue has the details.
                self.errors_pending = true;
                continue;
            }
            let now = Instant::now();
            for (k, msg) in msgs.iter().take(n as usize).enumerate() {
                let len = (msg.msg_len as usize).min(ANSWER_LEN);
                let Some(peer) = sockaddr_ip(&names[k]) else {
                    continue;
                };
                let Some((peer_port, port, ack, flags)) = parse_tcp(v6, &bufs[k][..len]) else {
                    continue;
                };
                let Some(answer) = answer(flags) else {
                    continue;
                };
                let Some(i) = self.matching((peer, peer_port), port, ack.wrapping_sub(1)) else {
                    continue;
                };
                let addr = self.probes[i].target.addr;
                let outcome = match answer {
                    Answer::SynAck => Outcome::Up,
                    Answer::Reset => refusable("connecting to", addr)(
                        io::Error::from_raw_os_error(libc::ECONNREFUSED),
                    )
                    .into_outcome(),
                };
                self.finish(i, outcome, now);
            }
            if (n as usize) < BATCH {
                break;
            }
        }
        self.rx = Some(rx);
        // ICMP errors are rare, and each makes a send or receive fail once: the error
        // queue is read only then, not in every round.
        if self.errors_pending {
            self.errors_pending = false;
            self.read_errors(&raw);
        }
    }

    /// Reads ICMP errors about our SYNs from the socket's error queue.
    fn read_errors(&mut self, raw: &RawTcp) {
        loop {
            let mut data = [0u8; 64];
            let mut control = [0u64; 32];
            // SAFETY: all-zero sockaddr_storage and msghdr values are valid.
            let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: as above.
            let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
            hdr.msg_name = (&raw mut name).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut iov;
            hdr.msg_iovlen = 1;
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = mem::size_of_val(&control);
            // SAFETY: the header points at live buffers for the call.
            let n = unsafe {
                libc::recvmsg(
                    raw.socket.as_raw_fd(),
                    &raw mut hdr,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return;
            }
            let Some(errno) = extended_errno(&hdr) else {
                continue;
            };
            let quoted = &data[..(n as usize).min(data.len())];
            if quoted.len() < 8 {
                continue;
            }
            let Some(peer) = sockaddr_ip(&name) else {
                continue;
            };
            let port = u16::from_be_bytes([quoted[0], quoted[1]]);
            let peer_port = u16::from_be_bytes([quoted[2], quoted[3]]);
            let isn = u32::from_be_bytes([quoted[4], quoted[5], quoted[6], quoted[7]]);
            let Some(i) = self.matching((peer, peer_port), port, isn) else {
                continue;
            };
            let addr = self.probes[i].target.addr;
            let outcome = refusable("connecting to", addr)(io::Error::from_raw_os_error(errno))
                .into_outcome();
            self.finish(i, outcome, Instant::now());
        }
    }
}

/// A seed for sequence numbers (and jitter) from the kernel's random source: sequence
/// numbers an off-path host could predict would let it forge a SYN-ACK (a dead backend
/// looks up) or a reset (a live one looks refused). Never zero (xorshift's fixed point).
fn random_seed(generation: u64) -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most the buffer's length into it.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let random = if n == 8 {
        u64::from_ne_bytes(seed)
    } else {
        // Only without getrandom (Linux < 3.17): the clock is the best left.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    (random ^ generation.wrapping_mul(0xbf58_476d_1ce4_e5b9)) | 1
}

/// Buffers for one `recvmmsg`.
struct RxBuffers {
    bufs: [[u8; ANSWER_LEN]; BATCH],
    names: [libc::sockaddr_storage; BATCH],
}

impl RxBuffers {
    fn new() -> Self {
        Self {
            bufs: [[0; ANSWER_LEN]; BATCH],
            // SAFETY: all-zero sockaddr_storage values are valid.
            names: unsafe { mem::zeroed() },
        }
    }
}

/// When SYNs are due: (engine index, epoch) by millisecond since the engine started. A
/// second's probes spread over its milliseconds, so taking the due ones is a walk from
/// the front of a small ordered map, not a sift through a heap of every target.
struct Calendar {
    start: Instant,
    slots: BTreeMap<u64, Vec<(u32, u32)>>,
    /// Emptied slots, reused.
    spare: Vec<Vec<(u32, u32)>>,
}

impl Calendar {
    fn new(start: Instant) -> Self {
        Self {
            start,
            slots: BTreeMap::new(),
            spare: Vec::new(),
        }
    }

    fn tick(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    fn push(&mut self, at: Instant, i: usize, epoch: u32) {
        let tick = self.tick(at);
        let spare = &mut self.spare;
        self.slots
            .entry(tick)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push((i as u32, epoch));
    }

    /// The earliest due time (to the millisecond).
    fn first(&self) -> Option<Instant> {
        self.slots
            .first_key_value()
            .map(|(&tick, _)| self.start + Duration::from_millis(tick))
    }

    /// Moves up to `limit` entries due by `horizon` into `out`.
    fn take(&mut self, horizon: Instant, limit: usize, out: &mut Vec<(u32, u32)>) {
        let last = self.tick(horizon);
        while out.len() < limit {
            let Some(mut slot) = self.slots.first_entry() else {
                break;
            };
            if *slot.key() > last {
                break;
            }
            let room = limit - out.len();
            let entries = slot.get_mut();
            if entries.len() > room {
                out.extend(entries.drain(entries.len() - room..));
                break;
            }
            out.append(entries);
            self.spare.push(slot.remove());
        }
    }
}

/// The deadlines of SYNs that are out: one queue per distinct timeout. SYNs go out in
/// time order, so each queue is sorted as it is built.
#[derive(Default)]
struct Deadlines(Vec<(Duration, VecDeque<Deadline>)>);

/// When a SYN's wait ends: (deadline, engine index, isn).
type Deadline = (Instant, u32, u32);

impl Deadlines {
    fn push(&mut self, timeout: Duration, sent: Instant, i: usize, isn: u32) {
        let queue = match self.0.iter().position(|(t, _)| *t == timeout) {
            Some(k) => &mut self.0[k].1,
            None => {
                self.0.push((timeout, VecDeque::new()));
                &mut self.0.last_mut().expect("just pushed").1
            }
        };
        queue.push_back((sent + timeout, i as u32, isn));
    }

    fn first(&self) -> Option<Instant> {
        self.0
            .iter()
            .filter_map(|(_, q)| q.front().map(|e| e.0))
            .min()
    }

    /// Drops the entries at the queues' fronts for which `out(index, isn)` is false.
    fn drop_answered(&mut self, out: impl Fn(usize, u32) -> bool) {
        for (_, q) in &mut self.0 {
            while q.front().is_some_and(|&(_, i, isn)| !out(i as usize, isn)) {
                q.pop_front();
            }
        }
    }

    /// One (engine index, isn) whose deadline is past at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(usize, u32)> {
        self.0.iter_mut().find_map(|(_, q)| {
            q.front()
                .is_some_and(|e| e.0 <= now)
                .then(|| q.pop_front())
                .flatten()
                .map(|(_, i, isn)| (i as usize, isn))
        })
    }
}

/// FxHash (as in rustc): the keys are the configured targets, not chosen by a peer, and
/// a lookup per answer should cost nanoseconds, not SipHash's tens.
#[derive(Default)]
struct PeerHasher(u64);

impl PeerHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for PeerHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// The errno of an `IP_RECVERR`/`IPV6_RECVERR` control message.
fn extended_errno(hdr: &libc::msghdr) -> Option<i32> {
    // SAFETY: the control buffer was filled by recvmsg; CMSG_* walk it within
    // msg_controllen, and the payload of a RECVERR message is a sock_extended_err.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let recverr = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if recverr {
                let err = std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                );
                return Some(err.ee_errno as i32);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// The address of a `sockaddr_in` or `sockaddr_in6`.
fn sockaddr_ip(name: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in, which fits in the storage.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The source address this host uses towards `addr` (a route lookup, no packet sent).
fn source_for(addr: SocketAddr) -> io::Result<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(addr)?;
    match socket.local_addr()?.ip() {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(io::Error::other("an IPv4 route with an IPv6 source")),
    }
}

/// Resolves when the socket may have answers or errors (or never, without a socket).
///
/// The socket is registered with the runtime only while this waits (a duplicate of its
/// descriptor, so engines of two generations never share a registration): a registered
/// socket wakes the runtime's thread for every packet it receives, wanted or not, and
/// while SYNs fall due continuously the rounds read the answers anyway. Registering
/// reports answers that arrived before it.
async fn readable(raw: Option<&RawTcp>) {
    let Some(raw) = raw else {
        return std::future::pending().await;
    };
    let registered = raw.socket.try_clone().and_then(|dup| {
        // SAFETY: the duplicate is owned by the AsyncFd, open until it is dropped.
        unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE | Interest::ERROR) }
            .map_err(|e| e.into_parts().1)
    });
    let ready = match &registered {
        Ok(fd) => fd
            .ready(Interest::READABLE | Interest::ERROR)
            .await
            .map(|_| ()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    };
    if let Err(e) = ready {
        tracing::warn!(error = %e, "half-open checks: waiting on the raw socket");
        tokio::time::sleep(ROUND).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;

    use super::{Calendar, Deadlines, parse_tcp, syn};
    use crate::health::scheduler::{self, Report, Schedule};
    use crate::health::{Checker, Outcome, ProbeKind, Target};

    /// The ones' complement sum of 16-bit words.
    fn sum(words: impl IntoIterator<Item = u16>) -> u16 {
        let mut s: u32 = words.into_iter().map(u32::from).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn an_ipv4_syn_has_a_valid_checksum_and_the_fields_asked() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 7, 9));
        let p = syn(Some(src), SocketAddr::from((dst, 8080)), 40000, 0xdead_beef);
        let pseudo = [src.octets(), dst.octets()]
            .concat()
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .chain([6, p.len() as u16])
            .collect::<Vec<_>>();
        let segment = p.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        assert_eq!(sum(pseudo.into_iter().chain(segment)), 0xffff, "checksum");
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 40000);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 8080);
        assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 0xdead_beef);
        assert_eq!(p[12] >> 4, 6, "data offset: 24 bytes");
        assert_eq!(p[13], 0x02, "SYN only");
        assert_eq!(&p[20..], &[2, 4, 0x05, 0xb4], "MSS 1460");
    }

    #[test]
    fn answers_are_parsed_past_ipv4_options() {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[13] = 0x12;
        let expected = Some((80, 40000, 7, 0x12));
        assert_eq!(
            parse_tcp(true, &tcp),
            expected,
            "IPv6: the TCP header first"
        );
        for ihl in [5u8, 6] {
            let mut packet = vec![0u8; usize::from(ihl) * 4];
            packet[0] = 0x40 | ihl;
            packet.extend_from_slice(&tcp);
            assert_eq!(parse_tcp(false, &packet), expected, "IHL {ihl}");
        }
        assert_eq!(parse_tcp(false, &[0x45; 30]), None, "too short");
    }

    #[test]
    fn the_calendar_hands_out_what_is_due_in_order_and_in_bursts() {
        let start = Instant::now();
        let mut c = Calendar::new(start);
        let ms = |n| start + Duration::from_millis(n);
        c.push(ms(30), 3, 0);
        c.push(ms(10), 1, 0);
        c.push(ms(10), 2, 0);
        c.push(ms(1000), 4, 0);
        assert_eq!(c.first(), Some(ms(10)));
        let mut out = Vec::new();
        c.take(ms(5), 10, &mut out);
        assert!(out.is_empty(), "nothing due by 5 ms: {out:?}");
        c.take(ms(30), 2, &mut out);
        assert_eq!(out.len(), 2, "at most the limit");
        c.take(ms(30), 10, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|e| e.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(c.first(), Some(ms(1000)));
    }

    #[test]
    fn deadlines_expire_in_order_and_answered_ones_are_dropped() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        let (short, long) = (Duration::from_millis(100), Duration::from_millis(500));
        d.push(long, now, 1, 11);
        d.push(short, now, 2, 22);
        d.push(short, now + Duration::from_millis(10), 3, 33);
        assert_eq!(d.first(), Some(now + short));
        d.drop_answered(|i, _| i != 2);
        assert_eq!(d.first(), Some(now + Duration::from_millis(110)));
        assert_eq!(d.pop_due(now + Duration::from_millis(109)), None);
        assert_eq!(d.pop_due(now + Duration::from_millis(110)), Some((3, 33)));
        assert_eq!(d.pop_due(now + long), Some((1, 11)));
        assert_eq!(d.first(), None);
    }

    fn half_open(addr: SocketAddr, timeout: Duration) -> (Target, Schedule) {
        let target = Target {
            address: addr.ip(),
            port: Some(addr.port()),
            kind: ProbeKind::Tcp {
                send: None,
                expect: None,
                half_open: true,
            },
            timeout,
        };
        let schedule = Schedule {
            interval: Duration::from_secs(60),
            jitter_percent: 0,
        };
        (target, schedule)
    }

    /// Probes each target once through the scheduler (as the daemon does) and returns
    /// the outcomes in target order.
    async fn probe_once(targets: Vec<(Target, Schedule)>) -> Vec<(Outcome, Duration)> {
        let (tx, mut rx) = mpsc::channel::<Report>(16);
        let n = targets.len();
        let _probes = scheduler::spawn(targets, Checker::new(4), tx, 1).expect(
            "half-open checks need a raw socket (CAP_NET_RAW): run the tests as root, as `cargo xtask test` does",
        );
        let mut out = vec![None; n];
        while out.iter().any(Option::is_none) {
            let report = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a result within 5 s")
                .expect("the engine runs");
            out[report.target] = Some((report.result.outcome, report.result.latency));
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    #[tokio::test]
    async fn half_open_checks_find_listening_closed_and_silent_ports() {
        let timeout = Duration::from_millis(300);
        let up = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        up.set_nonblocking(true).unwrap();
        let closed = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap()
        };
        // A listener whose accept queue is full drops SYNs: no answer at all.
        let full =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        full.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        full.listen(0).unwrap();
        let full_addr = full.local_addr().unwrap().as_socket().unwrap();
        let _queued = TcpStream::connect(full_addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));

        let results = probe_once(vec![
            half_open(up.local_addr().unwrap(), timeout),
            half_open(closed, timeout),
            half_open(full_addr, timeout),
        ])
        .await;
        assert_eq!(results[0].0, Outcome::Up, "listening port");
        assert!(results[0].1 < timeout, "answered in {:?}", results[0].1);
        let Outcome::Refused { reason } = &results[1].0 else {
            panic!("closed port: expected refused, got {:?}", results[1].0);
        };
        assert!(
            reason.contains(&closed.to_string()) && reason.contains("refused"),
            "{reason}"
        );
        assert_eq!(
            results[2].0,
            Outcome::Timeout { after: timeout },
            "full queue"
        );
        // The check never became a connection: the listener has nothing to accept.
        let accepted = up.accept();
        assert!(
            accepted
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the application saw the check: {accepted:?}"
        );
    }

    #[tokio::test]
    async fn half_open_checks_work_over_ipv6() {
        let Ok(up) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
            panic!("no IPv6 loopback: enable IPv6 (sysctl net.ipv6.conf.lo.disable_ipv6=0)");
        };
        let closed = {
            let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap()
        };
        let timeout = Duration::from_millis(300);
        let results = probe_once(vec![
            half_open(up.local_addr().unwrap(), timeout),
            half_open(closed, timeout),
        ])
        .await;
        assert_eq!(results[0].0, Outcome::Up);
        assert!(
            matches!(results[1].0, Outcome::Refused { .. }),
            "{:?}",
            results[1].0
        );
    }
}
