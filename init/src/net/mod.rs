//! Networking: loopback, one DHCP-configured interface, host name, resolv.conf and hosts.
//!
//! Nothing here is fatal: without a network the app still starts, after a clear warning.

pub mod dhcp;
pub mod ifconfig;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::log;
use dhcp::{Client, Lease, Reply};
use ifconfig::Ctl;

/// How long to wait for a network interface to appear.
const IFACE_WAIT: Duration = Duration::from_secs(10);
/// How long a found interface may still be unknown by name (see `configure`).
const IFACE_UP_WAIT: Duration = Duration::from_secs(3);
/// Overall DHCP time budget.
const DHCP_TIMEOUT: Duration = Duration::from_secs(15);
/// First retransmission interval; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(4);

/// ARPHRD_ETHER, the `type` of Ethernet-like interfaces in sysfs.
const ARPHRD_ETHER: &str = "1";

/// Networking under way in its own thread (loopback, interface, DHCP), started as soon as
/// the drivers are loading: it needs nothing of the layers, which are set up meanwhile.
pub struct Pending(
    Option<std::thread::JoinHandle<Result<Option<Lease>>>>,
    String,
);

/// Starts [`configure`] in a thread (or runs it here when no thread can be made).
pub fn start(default_hostname: &str) -> Pending {
    let h = default_hostname.to_string();
    match std::thread::Builder::new()
        .name("network".into())
        .spawn(move || configure(&h))
    {
        Ok(t) => Pending(Some(t), default_hostname.to_string()),
        Err(e) => {
            log!("warning: cannot start the network thread ({e}); configuring here");
            Pending(None, default_hostname.to_string())
        }
    }
}

/// Waits for the network (joining its thread: PID 1 is single-threaded again when the
/// app is forked), sets the host name and writes the host name files into `newroot`.
/// Never fails.
pub fn finish(p: Pending, newroot: &str) {
    let Pending(thread, default_hostname) = p;
    let result = match thread {
        Some(t) => t
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the network thread panicked"))),
        None => configure(&default_hostname),
    };
    let lease = match result {
        Ok(lease) => lease,
        Err(e) => {
            log!("warning: network: {e:#}; continuing without network");
            None
        }
    };
    let hostname = choose_hostname(
        lease.as_ref().and_then(|l| l.hostname.as_deref()),
        &default_hostname,
    );
    if let Err(e) = crate::sys::sethostname(&hostname) {
        log!("warning: sethostname {hostname}: {e}");
    }
    if let Err(e) = write_name_files(newroot, &hostname, lease.as_ref()) {
        log!("warning: {e:#}");
    }
    log!("hostname: {hostname}");
}

/// Loopback, then the first Ethernet interface via DHCP. `Ok(None)`: no interface.
fn configure(hostname: &str) -> Result<Option<Lease>> {
    let ctl = Ctl::new()?;
    ctl.set_ipv4("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0))
        .context("configuring lo")?;
    ctl.up("lo").context("configuring lo")?;

    let Some(ifname) = wait_for_interface(IFACE_WAIT) else {
        log!(
            "warning: no network interface appeared within {} s; continuing without network",
            IFACE_WAIT.as_secs()
        );
        return Ok(None);
    };
    // The kernel makes /sys/class/net/<if> before the interface can be looked up by name
    // (register_netdevice: the sysfs entry, then the name list): a just-loaded driver's
    // interface may answer ENODEV for a moment.
    let deadline = Instant::now() + IFACE_UP_WAIT;
    loop {
        match ctl.up(&ifname) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e),
        }
    }
    let mac = ctl.hwaddr(&ifname)?;
    let xid = match crate::sys::random_bytes::<4>() {
        Ok(b) => u32::from_ne_bytes(b),
        Err(_) => u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
    };
    let client = Client {
        xid,
        mac,
        hostname: Some(hostname.to_string()),
    };
    log!(
        "network: {ifname} ({}) up, asking DHCP",
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    );
    let lease =
        acquire(&ifname, &client, DHCP_TIMEOUT).with_context(|| format!("DHCP on {ifname}"))?;
    apply(&ctl, &ifname, &lease)?;
    log!("network: {}", describe(&ifname, &lease));
    Ok(Some(lease))
}

/// One-line summary of a lease for the console.
pub fn describe(ifname: &str, l: &Lease) -> String {
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!("{ifname} {}/{}", l.address, l.prefix());
    let routes = l.route_plan();
    if let Some(d) = routes.iter().find(|r| r.prefix == 0) {
        s += &format!(", router {}", d.gateway);
    }
    if !l.dns.is_empty() {
        s += &format!(", DNS {}", list(&l.dns));
    }
    if let Some(m) = l.mtu {
        s += &format!(", MTU {m}");
    }
    if let Some(t) = l.lease_secs {
        s += &format!(", lease {t} s");
    }
    s
}

/// Applies a lease: address, netmask, MTU, routes.
fn apply(ctl: &Ctl, ifname: &str, lease: &Lease) -> Result<()> {
    ctl.set_ipv4(ifname, lease.address, lease.netmask)?;
    if let Some(mtu) = lease.mtu {
        if let Err(e) = ctl.set_mtu(ifname, mtu) {
            log!("warning: {e:#}");
        }
    }
    for r in lease.route_plan() {
        ctl.add_route(ifname, &r)?;
    }
    Ok(())
}

/// Picks the first Ethernet interface by name, other than `lo`. `entries` are
/// `(name, contents of its sysfs type file)`.
pub fn pick_interface(entries: &[(String, String)]) -> Option<String> {
    let mut names: Vec<&String> = entries
        .iter()
        .filter(|(name, kind)| name != "lo" && kind.trim() == ARPHRD_ETHER)
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names.first().map(|n| n.to_string())
}

fn scan_interfaces() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = std::fs::read_to_string(e.path().join("type")).unwrap_or_default();
            out.push((name, kind));
        }
    }
    out
}

fn wait_for_interface(timeout: Duration) -> Option<String> {
    let start = Instant::now();
    loop {
        if let Some(name) = pick_interface(&scan_interfaces()) {
            return Some(name);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP socket on port 68 bound to `ifname`, allowed to broadcast.
fn dhcp_socket(ifname: &str) -> Result<UdpSocket> {
    let err = |what: &str| anyhow!("DHCP socket: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    // SAFETY: fd is a fresh descriptor we own; UdpSocket closes it on drop.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for (opt, name) in [
        (libc::SO_REUSEADDR, "SO_REUSEADDR"),
        (libc::SO_BROADCAST, "SO_BROADCAST"),
    ] {
        // SAFETY: &one is a valid c_int of the given length.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err(name));
        }
    }
    // SAFETY: name bytes are valid for their length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(err("SO_BINDTODEVICE"));
    }
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT);
    let sa = {
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa
    };
    // SAFETY: sa is a valid sockaddr_in of the given length.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(err("bind to port 68"));
    }
    Ok(sock)
}

/// Waits until `deadline` for a reply that `want` accepts; other datagrams are ignored.
fn receive(
    sock: &UdpSocket,
    client: &Client,
    deadline: Instant,
    want: impl Fn(&Reply) -> bool,
) -> Result<Option<Reply>> {
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        let Some(left) = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            return Ok(None);
        };
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Ok(reply) = client.classify(buf.get(..n).unwrap_or_default()) {
                    if want(&reply) {
                        return Ok(Some(reply));
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => bail!("receiving: {e}"),
        }
    }
}

/// DISCOVER -> OFFER -> REQUEST -> ACK with retransmission (1, 2, 4, 4, ... s) inside an
/// overall `timeout`. A NAK restarts from DISCOVER.
fn acquire(ifname: &str, client: &Client, timeout: Duration) -> Result<Lease> {
    let sock = dhcp_socket(ifname)?;
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    let start = Instant::now();
    let deadline = start + timeout;
    let secs = || u16::try_from(start.elapsed().as_secs()).unwrap_or(u16::MAX);
    let mut wait = FIRST_RETRY;
    let mut discovers = 0u32;
    'discover: while Instant::now() < deadline {
        discovers += 1;
        sock.send_to(&client.discover(secs()), dest)
            .context("sending DHCPDISCOVER")?;
        let until = (Instant::now() + wait).min(deadline);
        wait = (wait * 2).min(MAX_RETRY);
        let Some(Reply::Offer(offer)) =
            receive(&sock, client, until, |r| matches!(r, Reply::Offer(_)))?
        else {
            continue;
        };
        let mut req_wait = FIRST_RETRY;
        for _ in 0..3 {
            if Instant::now() >= deadline {
                break 'discover;
            }
            sock.send_to(&client.request(&offer, secs()), dest)
                .context("sending DHCPREQUEST")?;
            let until = (Instant::now() + req_wait).min(deadline);
            req_wait = (req_wait * 2).min(MAX_RETRY);
            match receive(&sock, client, until, |r| {
                matches!(r, Reply::Ack(_) | Reply::Nak(_))
            })? {
                Some(Reply::Ack(lease)) => return Ok(lease),
                Some(Reply::Nak(msg)) => {
                    log!(
                        "warning: DHCP server {} refused {}: {}",
                        offer.server_id,
                        offer.address,
                        msg.as_deref().unwrap_or("NAK")
                    );
                    continue 'discover;
                }
                _ => {}
            }
        }
    }
    bail!(
        "no DHCP lease within {} s ({discovers} DISCOVERs sent)",
        timeout.as_secs()
    )
}

/// The DHCP-given host name when it is a valid one, else `fallback`.
pub fn choose_hostname(from_dhcp: Option<&str>, fallback: &str) -> String {
    match from_dhcp {
        Some(h) if crate::config::valid_hostname(h) => h.to_string(),
        Some(h) => {
            log!(
                "warning: DHCP host name {:?} is not valid; using {fallback}",
                h.chars().take(64).collect::<String>()
            );
            fallback.to_string()
        }
        None => fallback.to_string(),
    }
}

/// `/etc/hosts` content: the existing lines except old `127.0.1.1` ones, a
/// `127.0.0.1 localhost` line when missing, and `127.0.1.1 <hostname>`.
pub fn hosts_content(existing: &str, hostname: &str) -> String {
    let mut lines: Vec<&str> = existing
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("127.0.1.1"))
        .collect();
    let has_localhost = lines.iter().any(|l| {
        let mut words = l.split('#').next().unwrap_or("").split_whitespace();
        words.next() == Some("127.0.0.1") && words.any(|w| w == "localhost")
    });
    let mut out = String::new();
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n");
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    out
}

/// `/etc/resolv.conf` content from DHCP: search domain and up to 3 name servers (the
/// resolver's limit).
pub fn resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>) -> String {
    let mut out = String::from("# written by fuse-init from DHCP\n");
    if let Some(d) = domain.filter(|d| crate::config::valid_hostname(d)) {
        out.push_str(&format!("search {d}\n"));
    }
    for ns in dns.iter().take(3) {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    out
}

/// Writes `content` to `path`, replacing a symlink (which could point outside the new
/// root when followed from init's root) instead of following it.
fn replace_file(path: &Path, content: &str) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.is_file() {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// /etc/hostname, /etc/hosts and (with DNS servers) /etc/resolv.conf under `newroot`.
fn write_name_files(newroot: &str, hostname: &str, lease: Option<&Lease>) -> Result<()> {
    let etc = format!("{newroot}/etc");
    crate::sys::mkdir_p(&etc, 0o755)?;
    let etc = Path::new(&etc);
    replace_file(&etc.join("hostname"), &format!("{hostname}\n"))?;
    let hosts = etc.join("hosts");
    let existing = match std::fs::symlink_metadata(&hosts) {
        Ok(m) if m.is_file() => std::fs::read_to_string(&hosts).unwrap_or_default(),
        _ => String::new(),
    };
    replace_file(&hosts, &hosts_content(&existing, hostname))?;
    if let Some(l) = lease.filter(|l| !l.dns.is_empty()) {
        replace_file(
            &etc.join("resolv.conf"),
            &resolv_conf(&l.dns, l.domain.as_deref()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn picks_first_ethernet_by_name() {
        let e = entries(&[
            ("lo", "772\n"),
            ("eth1", "1\n"),
            ("sit0", "776\n"),
            ("eth0", "1\n"),
        ]);
        assert_eq!(pick_interface(&e).as_deref(), Some("eth0"));
        assert_eq!(pick_interface(&entries(&[("lo", "772\n")])), None);
        assert_eq!(
            pick_interface(&entries(&[("lo", "1\n"), ("ens3", "1")])).as_deref(),
            Some("ens3")
        );
    }

    #[test]
    fn hosts_keeps_content_and_adds_names() {
        let debian = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n";
        assert_eq!(
            hosts_content(debian, "hello"),
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\thello\n"
        );
        assert_eq!(
            hosts_content("", "hello"),
            "127.0.0.1\tlocalhost\n127.0.1.1\thello\n"
        );
        // Old 127.0.1.1 line replaced; a commented-out localhost does not count.
        assert_eq!(
            hosts_content(
                "# 127.0.0.1 localhost\n127.0.1.1 old\n10.0.0.1 db\n\n",
                "new"
            ),
            "127.0.0.1\tlocalhost\n# 127.0.0.1 localhost\n10.0.0.1 db\n127.0.1.1\tnew\n"
        );
        let twice = hosts_content(&hosts_content(debian, "a"), "a");
        assert_eq!(twice, hosts_content(debian, "a"), "idempotent");
    }

    #[test]
    fn resolv_conf_lists_servers() {
        let dns = [
            Ipv4Addr::new(10, 0, 2, 3),
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(9, 9, 9, 9),
        ];
        assert_eq!(
            resolv_conf(&dns, Some("example.internal")),
            "# written by fuse-init from DHCP\nsearch example.internal\n\
             nameserver 10.0.2.3\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n"
        );
        assert_eq!(
            resolv_conf(&dns[..1], Some("bad domain\nnameserver 6.6.6.6")),
            "# written by fuse-init from DHCP\nnameserver 10.0.2.3\n",
            "a hostile domain name is dropped"
        );
    }

    #[test]
    fn hostname_choice() {
        assert_eq!(choose_hostname(Some("vm-1"), "hello"), "vm-1");
        assert_eq!(choose_hostname(None, "hello"), "hello");
        assert_eq!(choose_hostname(Some("bad name"), "hello"), "hello");
    }
}
