//! DHCPv4 messages (RFC 2131/2132, 3396, 3442): building and parsing, pure, no I/O.
//!
//! A message is the fixed BOOTP header (236 bytes), the magic cookie 99.130.83.99 and a
//! list of options (code, length, data), ended by option 255 and padded with option 0.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

/// UDP port DHCP servers listen on.
pub const SERVER_PORT: u16 = 67;
/// UDP port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;

/// `op` of a client-to-server message.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a server-to-client message.
pub const BOOTREPLY: u8 = 2;
/// `htype` of Ethernet (10 Mb and up).
pub const HTYPE_ETHERNET: u8 = 1;
/// `flags` bit asking servers to broadcast their replies (we have no address yet, so the
/// kernel would drop unicast replies).
pub const FLAG_BROADCAST: u16 = 0x8000;
/// The four bytes between the BOOTP header and the options.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Length of the fixed BOOTP header (op .. file).
const HEADER_LEN: usize = 236;
/// Offset of the options (after the cookie).
const OPTIONS_OFFSET: usize = HEADER_LEN + 4;
/// BOOTP's minimum message length; some relays and servers drop shorter ones.
const MIN_LEN: usize = 300;
/// Offsets of the `sname` (64 bytes) and `file` (128 bytes) fields.
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

/// Option codes used here (RFC 2132 unless noted).
pub mod opt {
    /// Padding, no length byte.
    pub const PAD: u8 = 0;
    /// Subnet mask, 4 bytes.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers, n*4 bytes, preferred first.
    pub const ROUTER: u8 = 3;
    /// DNS servers, n*4 bytes.
    pub const DNS: u8 = 6;
    /// Host name, text.
    pub const HOSTNAME: u8 = 12;
    /// DNS domain name (used as the search domain), text.
    pub const DOMAIN: u8 = 15;
    /// Interface MTU, 2 bytes, at least 68.
    pub const MTU: u8 = 26;
    /// Requested IP address (client, in REQUEST), 4 bytes.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time in seconds, 4 bytes.
    pub const LEASE_TIME: u8 = 51;
    /// Option overload: 1 = `file` holds options, 2 = `sname`, 3 = both.
    pub const OVERLOAD: u8 = 52;
    /// DHCP message type, 1 byte.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier, 4 bytes.
    pub const SERVER_ID: u8 = 54;
    /// Parameter request list, one code per byte.
    pub const PARAM_LIST: u8 = 55;
    /// Error message (in NAK), text.
    pub const MESSAGE: u8 = 56;
    /// Maximum DHCP message size the client accepts, 2 bytes.
    pub const MAX_SIZE: u8 = 57;
    /// Client identifier: type byte (1 = Ethernet) + hardware address.
    pub const CLIENT_ID: u8 = 61;
    /// Classless static routes (RFC 3442).
    pub const CLASSLESS_ROUTES: u8 = 121;
    /// End of options, no length byte.
    pub const END: u8 = 255;
}

/// Option 53 values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    /// The message type for an option 53 value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

/// One DHCP message, header fields as on the wire (host byte order for numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 = request (client to server), 2 = reply.
    pub op: u8,
    /// Hardware address type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length (6 for Ethernet).
    pub hlen: u8,
    /// Relay hops, 0 from a client.
    pub hops: u8,
    /// Transaction id chosen by the client, echoed by servers.
    pub xid: u32,
    /// Seconds since the client began acquiring.
    pub secs: u16,
    /// Bit 15: broadcast replies.
    pub flags: u16,
    /// Client's current address (0 while acquiring).
    pub ciaddr: Ipv4Addr,
    /// "Your" address: the one offered / assigned.
    pub yiaddr: Ipv4Addr,
    /// Next server (TFTP), unused here.
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Client hardware address, padded with zeros.
    pub chaddr: [u8; 16],
    /// Server host name field (or options, when overloaded).
    pub sname: [u8; 64],
    /// Boot file name field (or options, when overloaded).
    pub file: [u8; 128],
    /// Options in wire order, including those found in `file`/`sname` under option 52.
    /// Pad and End are not listed.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A message with every header field zero and no options.
    pub fn empty() -> Self {
        Message {
            op: 0,
            htype: 0,
            hlen: 0,
            hops: 0,
            xid: 0,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [0; 16],
            sname: [0; 64],
            file: [0; 128],
            options: Vec::new(),
        }
    }

    /// The data of option `code`; several instances are concatenated (RFC 3396).
    pub fn option(&self, code: u8) -> Option<Vec<u8>> {
        let mut found: Option<Vec<u8>> = None;
        for (c, data) in &self.options {
            if *c == code {
                found.get_or_insert_with(Vec::new).extend_from_slice(data);
            }
        }
        found
    }

    /// The DHCP message type (option 53), if present and known.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.option(opt::MESSAGE_TYPE)?.as_slice() {
            [v] => MessageType::from_u8(*v),
            _ => None,
        }
    }

    /// Serialises the message: header, cookie, options (split into 255-byte pieces when
    /// longer), End, then zero padding up to 300 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&self.sname);
        b.extend_from_slice(&self.file);
        b.extend_from_slice(&MAGIC_COOKIE);
        for (code, data) in &self.options {
            if data.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
            for chunk in data.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, opt::PAD);
        }
        b
    }

    /// Parses a message. Anything malformed (too short, wrong cookie, an option running past
    /// the end of its field) is an error.
    pub fn decode(buf: &[u8]) -> Result<Message> {
        if buf.len() < OPTIONS_OFFSET {
            bail!(
                "DHCP message is {} bytes, shorter than the {OPTIONS_OFFSET}-byte header",
                buf.len()
            );
        }
        let cookie = buf.get(HEADER_LEN..OPTIONS_OFFSET).unwrap_or_default();
        if cookie != MAGIC_COOKIE {
            bail!("DHCP magic cookie is {cookie:?}, expected {MAGIC_COOKIE:?}");
        }
        let u16_at = |o: usize| u16::from_be_bytes([byte(buf, o), byte(buf, o + 1)]);
        let u32_at = |o: usize| {
            u32::from_be_bytes([
                byte(buf, o),
                byte(buf, o + 1),
                byte(buf, o + 2),
                byte(buf, o + 3),
            ])
        };
        let ip_at = |o: usize| Ipv4Addr::from(u32_at(o));
        let mut m = Message {
            op: byte(buf, 0),
            htype: byte(buf, 1),
            hlen: byte(buf, 2),
            hops: byte(buf, 3),
            xid: u32_at(4),
            secs: u16_at(8),
            flags: u16_at(10),
            ciaddr: ip_at(12),
            yiaddr: ip_at(16),
            siaddr: ip_at(20),
            giaddr: ip_at(24),
            ..Message::empty()
        };
        copy_field(&mut m.chaddr, buf, 28);
        copy_field(&mut m.sname, buf, SNAME.start);
        copy_field(&mut m.file, buf, FILE.start);
        let main = buf.get(OPTIONS_OFFSET..).unwrap_or_default();
        m.options = parse_options(main).context("in the options field")?;
        let overload = match m.option(opt::OVERLOAD).as_deref() {
            None => 0,
            Some([v @ 1..=3]) => *v,
            Some(other) => bail!("option 52 (overload) has invalid value {other:?}"),
        };
        // RFC 2131 4.1: options, then `file`, then `sname`.
        if overload & 1 != 0 {
            let more = parse_options(&m.file).context("in the overloaded file field")?;
            m.options.extend(more);
        }
        if overload & 2 != 0 {
            let more = parse_options(&m.sname).context("in the overloaded sname field")?;
            m.options.extend(more);
        }
        Ok(m)
    }
}

fn byte(buf: &[u8], i: usize) -> u8 {
    buf.get(i).copied().unwrap_or(0)
}

fn copy_field(dst: &mut [u8], buf: &[u8], start: usize) {
    if let Some(src) = buf.get(start..start + dst.len()) {
        dst.copy_from_slice(src);
    }
}

/// Parses an options area: Pad bytes are skipped, End stops (anything after it is ignored),
/// a missing End at the end of the area is tolerated, an option whose length byte or data
/// runs past the end is an error.
pub fn parse_options(area: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&code) = area.get(i) {
        match code {
            opt::PAD => i += 1,
            opt::END => break,
            _ => {
                let Some(&len) = area.get(i + 1) else {
                    bail!("option {code} at offset {i} has no length byte");
                };
                let start = i + 2;
                let end = start + usize::from(len);
                let Some(data) = area.get(start..end) else {
                    bail!(
                        "option {code} at offset {i} claims {len} bytes but only {} remain",
                        area.len().saturating_sub(start)
                    );
                };
                out.push((code, data.to_vec()));
                i = end;
            }
        }
    }
    Ok(out)
}

/// One route: `dest/prefix` via `gateway`; a gateway of 0.0.0.0 means on-link (no gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// Parses option 121 (RFC 3442): repeated (width, significant destination octets, router).
pub fn parse_classless_routes(data: &[u8]) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    let mut i = 0;
    while let Some(&width) = data.get(i) {
        if width > 32 {
            bail!("option 121: prefix length {width} is more than 32");
        }
        let n = usize::from(width).div_ceil(8);
        let Some(dest_bytes) = data.get(i + 1..i + 1 + n) else {
            bail!("option 121: route at offset {i} is truncated");
        };
        let Some(gw) = data.get(i + 1 + n..i + 5 + n) else {
            bail!("option 121: router of route at offset {i} is truncated");
        };
        let mut d = [0u8; 4];
        d[..n].copy_from_slice(dest_bytes);
        let dest = Ipv4Addr::from(u32::from_be_bytes(d) & prefix_mask(width));
        routes.push(Route {
            dest,
            prefix: width,
            gateway: Ipv4Addr::new(byte(gw, 0), byte(gw, 1), byte(gw, 2), byte(gw, 3)),
        });
        i += 5 + n;
    }
    Ok(routes)
}

/// Netmask bits for a prefix length (0..=32).
pub fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Prefix length of a contiguous netmask, or None when the mask has holes.
pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// What an ACK assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address (yiaddr).
    pub address: Ipv4Addr,
    /// Subnet mask (option 1; the address class's default when absent).
    pub netmask: Ipv4Addr,
    /// Routers (option 3), preferred first.
    pub routers: Vec<Ipv4Addr>,
    /// Classless static routes (option 121); when present they replace `routers`.
    pub classless_routes: Vec<Route>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Interface MTU (option 26), only when at least 68.
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51).
    pub lease_secs: Option<u32>,
    /// The server that granted it (option 54).
    pub server_id: Option<Ipv4Addr>,
}

fn ip4(data: &[u8], what: &str) -> Result<Ipv4Addr> {
    match data {
        [a, b, c, d] => Ok(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => bail!("{what}: expected 4 bytes, got {}", data.len()),
    }
}

fn ip_list(data: &[u8], what: &str) -> Result<Vec<Ipv4Addr>> {
    if data.is_empty() || !data.len().is_multiple_of(4) {
        bail!("{what}: expected a multiple of 4 bytes, got {}", data.len());
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(byte(c, 0), byte(c, 1), byte(c, 2), byte(c, 3)))
        .collect())
}

fn text(data: &[u8]) -> Option<String> {
    let trimmed = match data.iter().position(|&b| b == 0) {
        Some(n) => data.get(..n).unwrap_or_default(),
        None => data,
    };
    let s = String::from_utf8_lossy(trimmed).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The classful default netmask for an address (used only when option 1 is absent).
fn classful_mask(a: Ipv4Addr) -> Ipv4Addr {
    match a.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

impl Lease {
    /// Extracts the lease from an ACK.
    pub fn from_message(m: &Message) -> Result<Lease> {
        if m.yiaddr.is_unspecified() || m.yiaddr.is_broadcast() || m.yiaddr.is_loopback() {
            bail!("ACK assigns unusable address {}", m.yiaddr);
        }
        let netmask = match m.option(opt::SUBNET_MASK) {
            Some(d) => ip4(&d, "option 1 (subnet mask)")?,
            None => classful_mask(m.yiaddr),
        };
        if mask_prefix(netmask).is_none() {
            bail!("option 1: subnet mask {netmask} is not contiguous");
        }
        let routers = match m.option(opt::ROUTER) {
            Some(d) => ip_list(&d, "option 3 (routers)")?,
            None => Vec::new(),
        };
        let classless_routes = match m.option(opt::CLASSLESS_ROUTES) {
            Some(d) => parse_classless_routes(&d)?,
            None => Vec::new(),
        };
        let dns = match m.option(opt::DNS) {
            Some(d) => ip_list(&d, "option 6 (DNS servers)")?,
            None => Vec::new(),
        };
        let mtu = match m.option(opt::MTU).as_deref() {
            None => None,
            Some([a, b]) => Some(u16::from_be_bytes([*a, *b])).filter(|v| *v >= 68),
            Some(d) => bail!("option 26 (MTU): expected 2 bytes, got {}", d.len()),
        };
        let lease_secs = match m.option(opt::LEASE_TIME).as_deref() {
            None => None,
            Some([a, b, c, d]) => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            Some(d) => bail!("option 51 (lease time): expected 4 bytes, got {}", d.len()),
        };
        let server_id = match m.option(opt::SERVER_ID) {
            Some(d) => Some(ip4(&d, "option 54 (server id)")?),
            None => None,
        };
        Ok(Lease {
            address: m.yiaddr,
            netmask,
            routers,
            classless_routes,
            dns,
            hostname: m.option(opt::HOSTNAME).and_then(|d| text(&d)),
            domain: m.option(opt::DOMAIN).and_then(|d| text(&d)),
            mtu,
            lease_secs,
            server_id,
        })
    }

    /// Prefix length of the netmask (validated contiguous at parse time).
    pub fn prefix(&self) -> u8 {
        mask_prefix(self.netmask).unwrap_or(32)
    }

    /// True when `ip` is inside our subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask);
        u32::from(ip) & m == u32::from(self.address) & m
    }

    /// The routes to add, in order: option 121 when present (RFC 3442 says option 3 is then
    /// ignored), else a default route via the first router. A gateway outside our subnet
    /// (as with /32 leases on some clouds) first gets an on-link host route.
    pub fn route_plan(&self) -> Vec<Route> {
        let wanted: Vec<Route> = if !self.classless_routes.is_empty() {
            self.classless_routes.clone()
        } else {
            self.routers
                .first()
                .map(|gw| Route {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: *gw,
                })
                .into_iter()
                .collect()
        };
        let mut out: Vec<Route> = Vec::new();
        for r in wanted {
            let gw = r.gateway;
            if !gw.is_unspecified() && !self.on_link(gw) {
                let host = Route {
                    dest: gw,
                    prefix: 32,
                    gateway: Ipv4Addr::UNSPECIFIED,
                };
                if !out.contains(&host) && !wanted_has(&out, gw) {
                    out.push(host);
                }
            }
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

/// True when an on-link route already in `routes` covers `ip`.
fn wanted_has(routes: &[Route], ip: Ipv4Addr) -> bool {
    routes.iter().any(|r| {
        r.gateway.is_unspecified() && u32::from(ip) & prefix_mask(r.prefix) == u32::from(r.dest)
    })
}

/// What the client sends in every message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Transaction id (random per boot).
    pub xid: u32,
    /// Our Ethernet address.
    pub mac: [u8; 6],
    /// Host name to announce (option 12), if any.
    pub hostname: Option<String>,
}

/// Options we ask servers for (option 55).
pub const REQUESTED_PARAMS: [u8; 9] = [
    opt::SUBNET_MASK,
    opt::ROUTER,
    opt::DNS,
    opt::HOSTNAME,
    opt::DOMAIN,
    opt::MTU,
    opt::LEASE_TIME,
    opt::SERVER_ID,
    opt::CLASSLESS_ROUTES,
];

impl Client {
    fn base(&self, kind: MessageType, secs: u16) -> Message {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&self.mac);
        let mut client_id = vec![HTYPE_ETHERNET];
        client_id.extend_from_slice(&self.mac);
        let mut m = Message {
            op: BOOTREQUEST,
            htype: HTYPE_ETHERNET,
            hlen: 6,
            xid: self.xid,
            secs,
            flags: FLAG_BROADCAST,
            chaddr,
            ..Message::empty()
        };
        m.options.push((opt::MESSAGE_TYPE, vec![kind as u8]));
        m.options.push((opt::CLIENT_ID, client_id));
        m.options
            .push((opt::MAX_SIZE, 1500u16.to_be_bytes().to_vec()));
        m
    }

    fn finish(&self, m: &mut Message) {
        if let Some(h) = &self.hostname {
            m.options.push((opt::HOSTNAME, h.as_bytes().to_vec()));
        }
        m.options.push((opt::PARAM_LIST, REQUESTED_PARAMS.to_vec()));
    }

    /// DHCPDISCOVER, broadcast flag set.
    pub fn discover(&self, secs: u16) -> Vec<u8> {
        let mut m = self.base(MessageType::Discover, secs);
        self.finish(&mut m);
        m.encode()
    }

    /// DHCPREQUEST for an offer (SELECTING state: requested IP + server id, ciaddr 0).
    pub fn request(&self, offer: &Offer, secs: u16) -> Vec<u8> {
        let mut m = self.base(MessageType::Request, secs);
        m.options
            .push((opt::REQUESTED_IP, offer.address.octets().to_vec()));
        m.options
            .push((opt::SERVER_ID, offer.server_id.octets().to_vec()));
        self.finish(&mut m);
        m.encode()
    }

    /// Decides what a received datagram is to us. `Err` means "not for us or malformed:
    /// ignore it" with the reason.
    pub fn classify(&self, buf: &[u8]) -> Result<Reply> {
        let m = Message::decode(buf)?;
        if m.op != BOOTREPLY {
            bail!("not a reply (op {})", m.op);
        }
        if m.xid != self.xid {
            bail!("transaction id {:#010x} is not ours", m.xid);
        }
        if m.chaddr.get(..6) != Some(&self.mac[..]) {
            bail!("reply is for another hardware address");
        }
        match m.message_type() {
            Some(MessageType::Offer) => {
                if m.yiaddr.is_unspecified() {
                    bail!("OFFER without an address");
                }
                let server_id = match m.option(opt::SERVER_ID) {
                    Some(d) => ip4(&d, "option 54 (server id)")?,
                    None if !m.siaddr.is_unspecified() => m.siaddr,
                    None => bail!("OFFER without a server identifier"),
                };
                Ok(Reply::Offer(Offer {
                    address: m.yiaddr,
                    server_id,
                }))
            }
            Some(MessageType::Ack) => Ok(Reply::Ack(Lease::from_message(&m)?)),
            Some(MessageType::Nak) => Ok(Reply::Nak(m.option(opt::MESSAGE).and_then(|d| text(&d)))),
            Some(other) => bail!("unexpected message type {other:?}"),
            None => bail!("no or unknown DHCP message type"),
        }
    }
}

/// An OFFER we may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The address offered (yiaddr).
    pub address: Ipv4Addr,
    /// The offering server (option 54), echoed in our REQUEST.
    pub server_id: Ipv4Addr,
}

/// A reply addressed to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer(Offer),
    Ack(Lease),
    /// NAK, with the server's message (option 56) if any.
    Nak(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const XID: u32 = 0x1a2b_3c4d;

    fn client() -> Client {
        Client {
            xid: XID,
            mac: MAC,
            hostname: Some("hello".into()),
        }
    }

    /// A reply written out by hand, byte by byte, the way QEMU's user network answers:
    /// the header, the cookie, then `opts`, End, and zero padding to 300 bytes.
    fn reply_bytes(yiaddr: [u8; 4], opts: &[u8]) -> Vec<u8> {
        let mut b = vec![2, 1, 6, 0];
        b.extend_from_slice(&XID.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x80, 0x00]); // secs, flags
        b.extend_from_slice(&[0, 0, 0, 0]); // ciaddr
        b.extend_from_slice(&yiaddr);
        b.extend_from_slice(&[10, 0, 2, 2]); // siaddr
        b.extend_from_slice(&[0, 0, 0, 0]); // giaddr
        b.extend_from_slice(&MAC);
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(&[0; 64]);
        b.extend_from_slice(&[0; 128]);
        assert_eq!(b.len(), 236);
        b.extend_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(opts);
        b.push(255);
        b.resize(b.len().max(300), 0);
        b
    }

    const QEMU_ACK_OPTS: &[u8] = &[
        53, 1, 5, // ACK
        54, 4, 10, 0, 2, 2, // server id
        51, 4, 0, 1, 0x51, 0x80, // lease 86400 s
        1, 4, 255, 255, 255, 0, // netmask
        3, 4, 10, 0, 2, 2, // router
        6, 4, 10, 0, 2, 3, // dns
    ];

    #[test]
    fn known_ack_round_trips_byte_for_byte() {
        let bytes = reply_bytes([10, 0, 2, 15], QEMU_ACK_OPTS);
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.op, BOOTREPLY);
        assert_eq!(m.xid, XID);
        assert_eq!(m.flags, FLAG_BROADCAST);
        assert_eq!(m.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(m.siaddr, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(m.message_type(), Some(MessageType::Ack));
        assert_eq!(m.options.len(), 6);
        assert_eq!(m.encode(), bytes);
    }

    #[test]
    fn qemu_ack_gives_the_qemu_lease() {
        let bytes = reply_bytes([10, 0, 2, 15], QEMU_ACK_OPTS);
        let Reply::Ack(lease) = client().classify(&bytes).unwrap() else {
            panic!("not an ACK");
        };
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(lease.prefix(), 24);
        assert_eq!(lease.routers, vec![Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.lease_secs, Some(86400));
        assert_eq!(lease.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.hostname, None);
        assert_eq!(lease.mtu, None);
        assert_eq!(
            lease.route_plan(),
            vec![Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                gateway: Ipv4Addr::new(10, 0, 2, 2)
            }]
        );
    }

    #[test]
    fn discover_has_the_expected_bytes() {
        let b = client().discover(3);
        assert_eq!(b.len(), 300);
        assert_eq!(&b[0..4], &[1, 1, 6, 0]);
        assert_eq!(&b[4..8], &XID.to_be_bytes());
        assert_eq!(&b[8..10], &[0, 3]);
        assert_eq!(&b[10..12], &[0x80, 0x00], "broadcast flag");
        assert_eq!(&b[12..28], &[0; 16], "ciaddr..giaddr are zero");
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(&b[236..240], &MAGIC_COOKIE);
        assert_eq!(&b[240..243], &[53, 1, 1], "DISCOVER first");
        assert_eq!(&b[243..251], &[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34]);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_eq!(m.option(opt::HOSTNAME), Some(b"hello".to_vec()));
        assert_eq!(m.option(opt::PARAM_LIST), Some(REQUESTED_PARAMS.to_vec()));
        assert_eq!(m.encode(), b, "re-encoding is identical");
    }

    #[test]
    fn request_carries_offer_and_server() {
        let offer = Offer {
            address: Ipv4Addr::new(10, 0, 2, 15),
            server_id: Ipv4Addr::new(10, 0, 2, 2),
        };
        let m = Message::decode(&client().request(&offer, 0)).unwrap();
        assert_eq!(m.message_type(), Some(MessageType::Request));
        assert_eq!(m.flags, FLAG_BROADCAST);
        assert_eq!(m.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.option(opt::REQUESTED_IP), Some(vec![10, 0, 2, 15]));
        assert_eq!(m.option(opt::SERVER_ID), Some(vec![10, 0, 2, 2]));
    }

    #[test]
    fn classifies_offer_nak_and_ignores_others() {
        let c = client();
        let offer = reply_bytes([10, 0, 2, 15], &[53, 1, 2, 54, 4, 10, 0, 2, 2]);
        assert_eq!(
            c.classify(&offer).unwrap(),
            Reply::Offer(Offer {
                address: Ipv4Addr::new(10, 0, 2, 15),
                server_id: Ipv4Addr::new(10, 0, 2, 2)
            })
        );
        let nak = reply_bytes([0; 4], &[53, 1, 6, 56, 5, b'n', b'o', b'p', b'e', 0]);
        assert_eq!(c.classify(&nak).unwrap(), Reply::Nak(Some("nope".into())));

        let mut other_xid = offer.clone();
        other_xid[4] ^= 0xff;
        assert!(format!("{}", c.classify(&other_xid).unwrap_err()).contains("not ours"));
        let mut other_mac = offer.clone();
        other_mac[33] ^= 1;
        assert!(c.classify(&other_mac).is_err());
        let mut request = offer.clone();
        request[0] = BOOTREQUEST;
        assert!(c.classify(&request).is_err());
        let no_type = reply_bytes([10, 0, 2, 15], &[54, 4, 10, 0, 2, 2]);
        assert!(c.classify(&no_type).is_err());
        let no_addr = reply_bytes([0; 4], &[53, 1, 2, 54, 4, 10, 0, 2, 2]);
        assert!(c.classify(&no_addr).is_err());
    }

    #[test]
    fn options_pad_end_and_concatenation() {
        let area = [
            0, 0, 53, 1, 5, 0, 6, 4, 1, 1, 1, 1, 6, 4, 2, 2, 2, 2, 255, 3, 4, 9, 9, 9, 9,
        ];
        let opts = parse_options(&area).unwrap();
        assert_eq!(
            opts,
            vec![(53, vec![5]), (6, vec![1, 1, 1, 1]), (6, vec![2, 2, 2, 2])],
            "pads skipped, nothing after End"
        );
        let mut m = Message::empty();
        m.options = opts;
        assert_eq!(m.option(6), Some(vec![1, 1, 1, 1, 2, 2, 2, 2]));
        assert_eq!(m.option(3), None);
        // No End at all is tolerated.
        assert_eq!(parse_options(&[53, 1, 2]).unwrap(), vec![(53, vec![2])]);
        assert_eq!(parse_options(&[]).unwrap(), vec![]);
    }

    #[test]
    fn long_option_is_split_and_rejoined() {
        let mut m = Message::empty();
        let long: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
        m.options.push((opt::CLASSLESS_ROUTES, long.clone()));
        let bytes = m.encode();
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back.options.len(), 3, "255 + 255 + 90");
        assert_eq!(back.option(opt::CLASSLESS_ROUTES), Some(long));
    }

    #[test]
    fn option_overflow_is_an_error() {
        let e = parse_options(&[3, 8, 10, 0, 2, 2]).unwrap_err();
        assert!(
            format!("{e}").contains("claims 8 bytes but only 4 remain"),
            "{e}"
        );
        let e = parse_options(&[53]).unwrap_err();
        assert!(format!("{e}").contains("no length byte"), "{e}");
        // Option 6 claims 200 bytes; the 300-byte message ends before that.
        let bad = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 6, 200, 1, 2]);
        assert_eq!(bad.len(), 300);
        let e = format!("{:#}", Message::decode(&bad).unwrap_err());
        assert!(e.contains("option 6") && e.contains("claims 200"), "{e}");
    }

    #[test]
    fn overloaded_file_and_sname_fields_are_parsed() {
        let mut bytes = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 52, 1, 3]);
        // file field (108..236): router; sname (44..108): DNS.
        bytes[108..115].copy_from_slice(&[3, 4, 10, 0, 2, 2, 255]);
        bytes[44..51].copy_from_slice(&[6, 4, 10, 0, 2, 3, 255]);
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.option(opt::ROUTER), Some(vec![10, 0, 2, 2]));
        assert_eq!(m.option(opt::DNS), Some(vec![10, 0, 2, 3]));
        let codes: Vec<u8> = m.options.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, vec![53, 52, 3, 6], "options, then file, then sname");

        let mut only_file = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 52, 1, 1]);
        only_file[108..115].copy_from_slice(&[3, 4, 10, 0, 2, 2, 255]);
        only_file[44..51].copy_from_slice(&[6, 4, 10, 0, 2, 3, 255]);
        let m = Message::decode(&only_file).unwrap();
        assert_eq!(
            m.option(opt::DNS),
            None,
            "sname is not options with overload 1"
        );

        let bad_value = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 52, 1, 4]);
        assert!(Message::decode(&bad_value).is_err());
        let mut bad_file = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 52, 1, 1]);
        bad_file[234..236].copy_from_slice(&[3, 4]);
        assert!(
            Message::decode(&bad_file).is_err(),
            "overflow inside file field"
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let good = reply_bytes([10, 0, 2, 15], QEMU_ACK_OPTS);
        for len in 0..good.len() {
            let _ = Message::decode(&good[..len]);
            let _ = client().classify(&good[..len]);
        }
        assert!(Message::decode(&good[..239]).is_err());
        let mut bad_cookie = good.clone();
        bad_cookie[236] = 0;
        assert!(Message::decode(&bad_cookie).is_err());
        // Pseudo-random garbage after a valid header must never panic.
        let mut state: u32 = 0x1234_5678;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            let n = 240 + (next() as usize % 200);
            b.truncate(n);
            for x in b.iter_mut().skip(240) {
                *x = next() as u8;
            }
            let _ = client().classify(&b);
            if let Ok(m) = Message::decode(&b) {
                let _ = Lease::from_message(&m);
            }
        }
    }

    #[test]
    fn ack_field_errors() {
        let c = client();
        let holes = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 1, 4, 255, 0, 255, 0]);
        assert!(format!("{:#}", c.classify(&holes).unwrap_err()).contains("not contiguous"));
        let short_mask = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 1, 3, 255, 255, 255]);
        assert!(c.classify(&short_mask).is_err());
        let bad_dns = reply_bytes([10, 0, 2, 15], &[53, 1, 5, 6, 5, 1, 2, 3, 4, 5]);
        assert!(c.classify(&bad_dns).is_err());
        let zero_addr = reply_bytes([0; 4], &[53, 1, 5]);
        assert!(c.classify(&zero_addr).is_err());
        // No netmask: class default; tiny MTU ignored; hostname trailing NUL trimmed.
        let ok = reply_bytes(
            [172, 16, 0, 9],
            &[
                53, 1, 5, 26, 2, 0, 10, 12, 4, b'w', b'e', b'b', 0, 15, 3, b'l', b'a', b'n',
            ],
        );
        let Reply::Ack(l) = c.classify(&ok).unwrap() else {
            panic!("not an ACK")
        };
        assert_eq!(l.netmask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(l.mtu, None);
        assert_eq!(l.hostname.as_deref(), Some("web"));
        assert_eq!(l.domain.as_deref(), Some("lan"));
    }

    #[test]
    fn classless_routes_rfc3442() {
        // 0.0.0.0/0 via 10.0.0.1; 10.17.0.0/16 via 10.0.0.2; 192.168.1.128/25 on-link.
        let data = [
            0, 10, 0, 0, 1, //
            16, 10, 17, 10, 0, 0, 2, //
            25, 192, 168, 1, 128, 0, 0, 0, 0,
        ];
        let r = parse_classless_routes(&data).unwrap();
        assert_eq!(
            r,
            vec![
                Route {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Ipv4Addr::new(10, 0, 0, 1)
                },
                Route {
                    dest: Ipv4Addr::new(10, 17, 0, 0),
                    prefix: 16,
                    gateway: Ipv4Addr::new(10, 0, 0, 2)
                },
                Route {
                    dest: Ipv4Addr::new(192, 168, 1, 128),
                    prefix: 25,
                    gateway: Ipv4Addr::UNSPECIFIED
                },
            ]
        );
        assert!(parse_classless_routes(&[33, 1, 2, 3, 4, 5, 1, 2, 3, 4]).is_err());
        assert!(parse_classless_routes(&[24, 10, 0]).is_err());
        assert!(parse_classless_routes(&[8, 10, 1, 2, 3]).is_err());
    }

    #[test]
    fn route_plan_cloud_slash32_and_option121_precedence() {
        // A /32 lease whose router is outside the subnet: host route first.
        let l = Lease {
            address: Ipv4Addr::new(10, 128, 0, 5),
            netmask: Ipv4Addr::new(255, 255, 255, 255),
            routers: vec![Ipv4Addr::new(10, 128, 0, 1)],
            classless_routes: vec![],
            dns: vec![],
            hostname: None,
            domain: None,
            mtu: Some(1460),
            lease_secs: None,
            server_id: None,
        };
        let gw = Ipv4Addr::new(10, 128, 0, 1);
        assert_eq!(
            l.route_plan(),
            vec![
                Route {
                    dest: gw,
                    prefix: 32,
                    gateway: Ipv4Addr::UNSPECIFIED
                },
                Route {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: gw
                },
            ]
        );
        // Option 121 present: option 3 ignored; an explicit on-link route for the gateway
        // makes the extra host route unnecessary.
        let mut l2 = l.clone();
        l2.routers = vec![Ipv4Addr::new(9, 9, 9, 9)];
        l2.classless_routes = vec![
            Route {
                dest: gw,
                prefix: 32,
                gateway: Ipv4Addr::UNSPECIFIED,
            },
            Route {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
                gateway: gw,
            },
        ];
        assert_eq!(l2.route_plan(), l2.classless_routes);
        let none = Lease {
            routers: vec![],
            ..l
        };
        assert!(none.route_plan().is_empty());
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
    }
}
