//! Cloud user data as boot-time configuration, the last source tried. The metadata service
//! (169.254.169.254) is contacted only when the DMI data says the machine runs on that cloud:
//! `Amazon EC2` -> IMDSv2 (PUT a session token, then GET /latest/user-data); `Google` ->
//! the GCE metadata server (`Metadata-Flavor: Google`, instance/attributes/user-data).
//! Anywhere else (QEMU, a laptop, another cloud) nothing is sent. The HTTP client is a small
//! HTTP/1.0 one over std sockets; its request building and response parsing are pure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Where the DMI strings are.
const DMI_DIR: &str = "/sys/class/dmi/id";
/// The link-local metadata address of EC2 and GCE.
pub const METADATA: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80);
/// Largest answer read (EC2 user data is at most 16 KiB, GCE metadata values 256 KiB).
const MAX_RESPONSE: u64 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per request (the metadata service can lag the first DHCP lease a little).
const ATTEMPTS: u32 = 3;

/// A cloud whose metadata service the init knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Ec2,
    Gce,
}

impl Cloud {
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Ec2 => "EC2",
            Cloud::Gce => "GCE",
        }
    }
}

/// The DMI strings the decision reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub bios_vendor: String,
    pub bios_version: String,
}

/// Reads the DMI strings (missing ones are empty).
pub fn read_dmi() -> Dmi {
    let get = |f: &str| {
        std::fs::read_to_string(format!("{DMI_DIR}/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    Dmi {
        sys_vendor: get("sys_vendor"),
        product_name: get("product_name"),
        bios_vendor: get("bios_vendor"),
        bios_version: get("bios_version"),
    }
}

/// Which cloud the DMI data names, if any. Nitro EC2 says `Amazon EC2`; Xen-based EC2 says
/// `Xen` with a BIOS version ending in `.amazon`; GCE says `Google` /
/// `Google Compute Engine`. Pure.
pub fn detect(d: &Dmi) -> Option<Cloud> {
    if d.sys_vendor == "Amazon EC2"
        || d.bios_vendor == "Amazon EC2"
        || (d.sys_vendor == "Xen" && d.bios_version.to_ascii_lowercase().ends_with(".amazon"))
    {
        return Some(Cloud::Ec2);
    }
    if d.sys_vendor == "Google"
        || d.product_name == "Google Compute Engine"
        || d.bios_vendor == "Google"
    {
        return Some(Cloud::Gce);
    }
    None
}

/// An HTTP/1.0 request's bytes.
pub fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: fuse-init\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        r.push_str("Content-Length: 0\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a whole HTTP/1.x response as read until the server closed the connection:
/// status line, headers, and a body delimited by Content-Length, chunked encoding, or the
/// end of the data. Pure.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without the end of its headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("HTTP headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {:?}", status_line);
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let rest = &raw[end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        resp.body = dechunk(rest)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        resp.body = rest
            .get(..len)
            .context("HTTP body shorter than its Content-Length")?
            .to_vec();
    } else {
        resp.body = rest.to_vec();
    }
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunked body")?;
        let size_text = std::str::from_utf8(&data[..nl]).context("bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("truncated chunk")?);
        data = data.get(size + 2..).context("truncated chunk")?;
    }
}

/// One request to the metadata service over a fresh connection.
fn exchange(addr: SocketAddrV4, req: &[u8]) -> Result<Response> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(req).context("sending the request")?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    parse_response(&raw)
}

fn exchange_retry(addr: SocketAddrV4, req: &[u8]) -> Result<Response> {
    let mut last = None;
    for i in 0..ATTEMPTS {
        match exchange(addr, req) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
        if i + 1 < ATTEMPTS {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// The instance's user data (`Ok(None)` when it has none).
pub fn user_data(cloud: Cloud) -> Result<Option<Vec<u8>>> {
    user_data_from(METADATA, cloud)
}

/// [`user_data`] from a metadata service at `addr`.
pub fn user_data_from(addr: SocketAddrV4, cloud: Cloud) -> Result<Option<Vec<u8>>> {
    let host = METADATA.ip().to_string();
    let resp = match cloud {
        Cloud::Ec2 => {
            let t = exchange_retry(
                addr,
                &request(
                    "PUT",
                    &host,
                    "/latest/api/token",
                    &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
                ),
            )
            .context("IMDSv2 token")?;
            if t.status != 200 {
                bail!("IMDSv2 token request answered HTTP {}", t.status);
            }
            let token = String::from_utf8(t.body).context("IMDSv2 token is not text")?;
            exchange_retry(
                addr,
                &request(
                    "GET",
                    &host,
                    "/latest/user-data",
                    &[("X-aws-ec2-metadata-token", token.trim())],
                ),
            )?
        }
        Cloud::Gce => exchange_retry(
            addr,
            &request(
                "GET",
                "metadata.google.internal",
                "/computeMetadata/v1/instance/attributes/user-data",
                &[("Metadata-Flavor", "Google")],
            ),
        )?,
    };
    match resp.status {
        200 => Ok(Some(resp.body)),
        404 => Ok(None),
        s => bail!("user data request answered HTTP {s}"),
    }
}

/// Whether user data is meant for fuse: an env file, not a cloud-init document, a script,
/// a MIME multipart or gzip data (those are left alone). Pure.
pub fn is_env_file(data: &[u8]) -> bool {
    let start: Vec<u8> = data
        .iter()
        .copied()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(32)
        .collect();
    !(start.starts_with(b"#!")
        || start.starts_with(b"#cloud-")
        || start.starts_with(b"Content-Type:")
        || start.starts_with(b"MIME-Version:")
        || data.starts_with(&[0x1f, 0x8b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(v: &str, p: &str, bv: &str, bver: &str) -> Dmi {
        Dmi {
            sys_vendor: v.into(),
            product_name: p.into(),
            bios_vendor: bv.into(),
            bios_version: bver.into(),
        }
    }

    #[test]
    fn detects_only_the_clouds_it_knows() {
        assert_eq!(
            detect(&dmi("Amazon EC2", "m5.large", "Amazon EC2", "1.0")),
            Some(Cloud::Ec2)
        );
        assert_eq!(
            detect(&dmi("Xen", "HVM domU", "Xen", "4.11.amazon")),
            Some(Cloud::Ec2)
        );
        assert_eq!(
            detect(&dmi("Google", "Google Compute Engine", "Google", "Google")),
            Some(Cloud::Gce)
        );
        // QEMU (what the tests run), plain Xen, others, and no DMI at all: never contacted.
        assert_eq!(
            detect(&dmi(
                "QEMU",
                "Standard PC (Q35 + ICH9, 2009)",
                "EFI Development Kit II / OVMF",
                "0.0.0"
            )),
            None
        );
        assert_eq!(detect(&dmi("Xen", "HVM domU", "Xen", "4.11")), None);
        assert_eq!(
            detect(&dmi("Microsoft Corporation", "Virtual Machine", "", "")),
            None
        );
        assert_eq!(detect(&Dmi::default()), None);
    }

    #[test]
    fn builds_http10_requests() {
        let r = request(
            "PUT",
            "169.254.169.254",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        );
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "PUT /latest/api/token HTTP/1.0\r\nHost: 169.254.169.254\r\nUser-Agent: fuse-init\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: 300\r\nContent-Length: 0\r\n\r\n"
        );
        let g = String::from_utf8(request(
            "GET",
            "metadata.google.internal",
            "/x",
            &[("Metadata-Flavor", "Google")],
        ))
        .unwrap();
        assert!(
            g.starts_with("GET /x HTTP/1.0\r\n")
                && g.contains("Metadata-Flavor: Google\r\n")
                && !g.contains("Content-Length")
        );
    }

    #[test]
    fn parses_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nA=1\nextra",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"A=1\ne"[..]));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnot here").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"not here"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nA=1\n\r\n3;x=y\r\nB=2\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"A=1\nB=2");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    /// A loopback stand-in for a metadata service: answers each connection with `answer`
    /// given the request text, one connection after another.
    fn fake_metadata(answer: fn(&str) -> String, connections: usize) -> SocketAddrV4 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&b[..n]);
                }
                let resp = answer(&String::from_utf8_lossy(&buf));
                s.write_all(resp.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn ec2_imdsv2_token_then_user_data_over_loopback() {
        let addr = fake_metadata(
            |req| {
                if req.starts_with("PUT /latest/api/token HTTP/1.0\r\n")
                    && req.contains("X-aws-ec2-metadata-token-ttl-seconds: 300\r\n")
                {
                    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ntok123".into()
                } else if req.starts_with("GET /latest/user-data HTTP/1.0\r\n")
                    && req.contains("X-aws-ec2-metadata-token: tok123\r\n")
                {
                    "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nGREETING=ec2\nX".into()
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into()
                }
            },
            2,
        );
        let data = user_data_from(addr, Cloud::Ec2).unwrap().unwrap();
        assert_eq!(data, b"GREETING=ec2\nX");
    }

    #[test]
    fn gce_user_data_and_absent_user_data_over_loopback() {
        let addr = fake_metadata(
            |req| {
                if req.starts_with(
                    "GET /computeMetadata/v1/instance/attributes/user-data HTTP/1.0\r\n",
                ) && req.contains("Metadata-Flavor: Google\r\n")
                    && req.contains("Host: metadata.google.internal\r\n")
                {
                    "HTTP/1.0 200 OK\r\n\r\nGREETING=gce\n".into()
                } else {
                    "HTTP/1.0 403 Forbidden\r\n\r\n".into()
                }
            },
            1,
        );
        assert_eq!(
            user_data_from(addr, Cloud::Gce).unwrap().unwrap(),
            b"GREETING=gce\n"
        );
        let none = fake_metadata(|_| "HTTP/1.0 404 Not Found\r\n\r\n".into(), 1);
        assert_eq!(user_data_from(none, Cloud::Gce).unwrap(), None);
    }

    #[test]
    fn env_files_are_told_from_other_user_data() {
        assert!(is_env_file(b"GREETING=cloud\n"));
        assert!(is_env_file(b"# comment\nA=1\n"));
        assert!(!is_env_file(b"#cloud-config\npackages: []\n"));
        assert!(!is_env_file(b"#!/bin/sh\necho hi\n"));
        assert!(!is_env_file(b"Content-Type: multipart/mixed; boundary=x\n"));
        assert!(!is_env_file(&[0x1f, 0x8b, 8, 0]));
    }
}
