//! Interface and route configuration through the classic socket ioctls (SIOCSIF*, SIOCADDRT).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Result};

use super::dhcp::{prefix_mask, Route};

/// An AF_INET datagram socket used only as a handle for ioctls.
pub struct Ctl {
    fd: OwnedFd,
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

/// `ip` as a generic `sockaddr` (AF_INET).
pub fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = sockaddr_in(ip, 0);
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the
    // ioctl ABI expects an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        bail!("bad interface name {name:?}");
    }
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

impl Ctl {
    /// Opens the control socket.
    pub fn new() -> Result<Ctl> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(anyhow!(
                "cannot open an AF_INET socket: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Ctl {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<()> {
        // SAFETY: arg points to a properly initialised struct of the type the request expects.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), req, arg as *mut T) };
        if ret < 0 {
            return Err(anyhow!("{what}: {}", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets IFF_UP (keeping the other flags).
    pub fn up(&self, name: &str) -> Result<()> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req, &format!("{name}: get flags"))?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("{name}: set up"))
    }

    /// The interface's hardware (MAC) address.
    pub fn hwaddr(&self, name: &str) -> Result<[u8; 6]> {
        let mut req = ifreq(name)?;
        self.ioctl(
            libc::SIOCGIFHWADDR,
            &mut req,
            &format!("{name}: get hardware address"),
        )?;
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(data.iter()) {
            *dst = *src as u8;
        }
        Ok(mac)
    }

    fn set_addr_kind(
        &self,
        name: &str,
        req_code: libc::c_ulong,
        ip: Ipv4Addr,
        what: &str,
    ) -> Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        self.ioctl(req_code, &mut req, &format!("{name}: set {what} {ip}"))
    }

    /// Sets the address, netmask and broadcast address.
    pub fn set_ipv4(&self, name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> Result<()> {
        self.set_addr_kind(name, libc::SIOCSIFADDR, addr, "address")?;
        self.set_addr_kind(name, libc::SIOCSIFNETMASK, netmask, "netmask")?;
        if u32::from(netmask) < 0xffff_fffe {
            let bcast = Ipv4Addr::from(u32::from(addr) | !u32::from(netmask));
            self.set_addr_kind(name, libc::SIOCSIFBRDADDR, bcast, "broadcast")?;
        }
        Ok(())
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, name: &str, mtu: u16) -> Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ioctl(
            libc::SIOCSIFMTU,
            &mut req,
            &format!("{name}: set MTU {mtu}"),
        )
    }

    /// Adds a route through `dev`. An existing identical route is not an error.
    pub fn add_route(&self, dev: &str, r: &Route) -> Result<()> {
        let c_dev = crate::sys::cstring(dev)?;
        // SAFETY: rtentry is plain old data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(r.dest);
        rt.rt_genmask = sockaddr(Ipv4Addr::from(prefix_mask(r.prefix)));
        rt.rt_flags = libc::RTF_UP;
        if r.prefix == 32 {
            rt.rt_flags |= libc::RTF_HOST;
        }
        if !r.gateway.is_unspecified() {
            rt.rt_gateway = sockaddr(r.gateway);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        rt.rt_dev = c_dev.as_ptr().cast_mut();
        let what = if r.gateway.is_unspecified() {
            format!("add route {}/{} dev {dev}", r.dest, r.prefix)
        } else {
            format!(
                "add route {}/{} via {} dev {dev}",
                r.dest, r.prefix, r.gateway
            )
        };
        // SAFETY: rt is initialised; rt_dev points at c_dev, alive for the call.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SIOCADDRT,
                &mut rt as *mut libc::rtentry,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(anyhow!("{what}: {e}"));
            }
        }
        Ok(())
    }
}

/// Size of the generic sockaddr the ioctls take.
const _: () =
    assert!(std::mem::size_of::<libc::sockaddr_in>() == std::mem::size_of::<libc::sockaddr>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_layout_is_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: 2 bytes port, then the address in network byte order.
        let d: Vec<u8> = sa.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(&d[..6], &[0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn ifreq_rejects_bad_names() {
        assert!(ifreq("").is_err());
        assert!(ifreq("a-very-long-interface-name").is_err());
        let r = ifreq("eth0").unwrap();
        assert_eq!(
            r.ifr_name[..5].iter().map(|c| *c as u8).collect::<Vec<_>>(),
            b"eth0\0"
        );
    }
}
