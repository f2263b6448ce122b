//! A small OCI distribution-spec v2 client on `ureq`: blob HEAD / monolithic upload (POST +
//! PUT with the digest) / GET, manifest PUT / GET / HEAD, with Basic auth and the Bearer
//! token flow answered when the registry challenges (401 + `WWW-Authenticate`). Plain HTTP
//! only when the caller allows it. Counts the request body bytes it sends.

use super::auth::{self, Credentials};
use super::{Descriptor, Reference, MANIFEST_TYPE};
use anyhow::{bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::io::Read;
use std::time::Duration;
use ureq::http::Response;

/// Largest manifest accepted (the distribution spec's registries use 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    repo: String,
    registry: String,
    insecure: bool,
    creds: Option<Credentials>,
    /// Actions asked for in token scopes: `pull` or `pull,push`.
    actions: &'static str,
    /// The current `Authorization` header value, once a challenge was answered. Sent only
    /// to the registry's own origin (`base`): never to an upload `Location` or anything
    /// else on another host, port or scheme.
    authorization: RefCell<Option<String>>,
    /// Whether the plain-HTTP warning about credentials was given.
    warned_clear: Cell<bool>,
    sent: Cell<u64>,
}

/// The origin (scheme, host, port) of an http(s) URL, lower-cased, default ports filled in.
/// `None` for anything else (such a URL never gets credentials).
pub(crate) fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()?),
        _ => (authority, default),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Why a request failed, with the registry's own error text when it sent one.
fn describe(method: &str, url: &str, resp: &mut Response<ureq::Body>) -> String {
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let errs = v.get("errors")?.as_array()?.clone();
            Some(
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.get("code").and_then(|c| c.as_str()).unwrap_or("?"),
                            e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .unwrap_or_default();
    format!(
        "{method} {url}: HTTP {}{}",
        status.as_u16(),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        }
    )
}

impl Client {
    /// A client for `r`'s repository. `push` asks tokens for pull and push.
    pub fn new(r: &Reference, insecure: bool, creds: Option<Credentials>, push: bool) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .https_only(!insecure)
            // A redirect (blob downloads often go to a storage host) carries no credentials.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::Never)
            .user_agent(format!("fuse/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            base: r.base_url(insecure),
            repo: r.repository.clone(),
            registry: r.registry.clone(),
            insecure,
            creds,
            actions: if push { "pull,push" } else { "pull" },
            authorization: RefCell::new(None),
            warned_clear: Cell::new(false),
            sent: Cell::new(0),
        }
    }

    /// Request body bytes sent so far (blob uploads and manifests).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.get()
    }

    fn once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<ureq::Body>> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = self.authorization.borrow().as_deref() {
            if origin(url).is_some_and(|o| Some(o) == origin(&self.base)) {
                if url.starts_with("http://") {
                    self.warn_clear();
                }
                b = b.header("Authorization", a);
            } else {
                tracing::debug!(
                    "{method} {url}: another origin than {}, sent without credentials",
                    self.base
                );
            }
        }
        let r = match body {
            Some(data) => {
                let req = b
                    .body(data)
                    .with_context(|| format!("bad request {method} {url}"))?;
                let r = self.agent.run(req);
                if r.is_ok() {
                    self.sent.set(self.sent.get() + data.len() as u64);
                }
                r
            }
            None => {
                let req = b
                    .body(())
                    .with_context(|| format!("bad request {method} {url}"))?;
                self.agent.run(req)
            }
        };
        r.with_context(|| format!("{method} {url}"))
    }

    /// One request; on 401 answers the challenge (Basic or Bearer) and retries once.
    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<ureq::Body>> {
        let resp = self.once(method, url, headers, body)?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .with_context(|| {
                format!("{method} {url}: HTTP 401 without a WWW-Authenticate challenge")
            })?;
        self.answer(&challenge)
            .with_context(|| format!("authenticating to {}", self.registry))?;
        self.once(method, url, headers, body)
    }

    /// Once per client: credentials are about to cross the network unencrypted.
    fn warn_clear(&self) {
        if !self.warned_clear.replace(true) {
            tracing::warn!(
                "--insecure: sending credentials for {} over plain HTTP, readable by anyone on the path",
                self.registry
            );
        }
    }

    fn answer(&self, header: &str) -> Result<()> {
        let c = auth::parse_challenge(header)?;
        let need_creds = || {
            format!(
                "{} asks for credentials: give --username (password in FUSE_REGISTRY_PASSWORD) \
                 or log in with docker (auths in ~/.docker/config.json)",
                self.registry
            )
        };
        match c.scheme.as_str() {
            "basic" => {
                let creds = self.creds.as_ref().with_context(need_creds)?;
                if !self.insecure && self.base.starts_with("http://") {
                    bail!("refusing to send a password over plain HTTP");
                }
                *self.authorization.borrow_mut() = Some(creds.basic_header());
                Ok(())
            }
            "bearer" => {
                let scope = format!("repository:{}:{}", self.repo, self.actions);
                let url = auth::token_url(&c, &scope, self.insecure)?;
                let mut b = ureq::http::Request::builder().method("GET").uri(&url);
                if let Some(creds) = &self.creds {
                    // The realm is where the registry sends us for a token (often another
                    // host, as with Docker Hub): https unless --insecure (token_url checks).
                    if url.starts_with("http://") {
                        self.warn_clear();
                    }
                    b = b.header("Authorization", creds.basic_header());
                }
                let req = b.body(()).context("bad token request")?;
                let mut resp = self.agent.run(req).with_context(|| format!("GET {url}"))?;
                if resp.status().as_u16() == 401 && self.creds.is_none() {
                    bail!(need_creds());
                }
                if !resp.status().is_success() {
                    bail!(
                        "token request refused: {}",
                        describe("GET", &url, &mut resp)
                    );
                }
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .with_context(|| format!("GET {url}"))?;
                let token = auth::parse_token(&body).with_context(|| format!("GET {url}"))?;
                *self.authorization.borrow_mut() = Some(format!("Bearer {token}"));
                Ok(())
            }
            other => bail!("unsupported authentication scheme {other:?}"),
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base, self.repo)
    }

    /// Does the repository have this blob?
    pub fn blob_exists(&self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let mut r = self.request("HEAD", &url, &[], None)?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!(describe("HEAD", &url, &mut r)),
        }
    }

    /// Monolithic upload: POST to open an upload session, PUT the bytes with their digest.
    pub fn upload_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let url = self.url("blobs/uploads/");
        let mut r = self.request("POST", &url, &[], Some(&[]))?;
        if r.status().as_u16() != 202 {
            bail!(describe("POST", &url, &mut r));
        }
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("POST {url}: no Location for the upload"))?
            .to_string();
        let mut put = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            bail!("POST {url}: unusable upload Location {location:?}");
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", auth::urlencode(digest)));
        let mut r = self.request(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            Some(data),
        )?;
        if r.status().as_u16() != 201 {
            bail!(describe("PUT", &put, &mut r));
        }
        Ok(())
    }

    /// PUT a manifest under a tag (or its digest); returns the digest the registry reports.
    pub fn put_manifest(&self, reference: &str, bytes: &[u8]) -> Result<Option<String>> {
        self.put_manifest_as(reference, bytes, MANIFEST_TYPE)
    }

    /// [`Client::put_manifest`] for a document of another media type (an image index, a
    /// Docker manifest or list): `media_type` is the `Content-Type` sent.
    pub fn put_manifest_as(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Option<String>> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut r = self.request("PUT", &url, &[("Content-Type", media_type)], Some(bytes))?;
        if r.status().as_u16() != 201 {
            bail!(describe("PUT", &url, &mut r));
        }
        Ok(r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Is this manifest digest in the repository?
    pub fn manifest_exists(&self, digest: &str) -> Result<bool> {
        let url = self.url(&format!("manifests/{digest}"));
        let mut r = self.request("HEAD", &url, &[("Accept", MANIFEST_TYPE)], None)?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!(describe("HEAD", &url, &mut r)),
        }
    }

    /// The manifest bytes for a tag or digest (an OCI image manifest: fuse's own artifacts).
    pub fn get_manifest(&self, reference: &str) -> Result<Vec<u8>> {
        self.get_manifest_as(reference, &[MANIFEST_TYPE])
            .map(|(bytes, _)| bytes)
    }

    /// The manifest bytes for a tag or digest, asking for any of the media types `accept`
    /// (e.g. image indexes and Docker manifests too), with the `Content-Type` the registry
    /// answered (what the document is when it does not say so itself). The caller verifies
    /// the bytes against the digest it asked for.
    pub fn get_manifest_as(
        &self,
        reference: &str,
        accept: &[&str],
    ) -> Result<(Vec<u8>, Option<String>)> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = accept.join(", ");
        let mut r = self.request("GET", &url, &[("Accept", accept.as_str())], None)?;
        if r.status().as_u16() != 200 {
            bail!(describe("GET", &url, &mut r));
        }
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty());
        let bytes = r
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .with_context(|| format!("GET {url}"))?;
        Ok((bytes, content_type))
    }

    /// The manifest bytes for a tag or digest, or `None` when the repository has none.
    pub fn find_manifest(&self, reference: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut r = self.request("GET", &url, &[("Accept", MANIFEST_TYPE)], None)?;
        match r.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => bail!(describe("GET", &url, &mut r)),
        }
        r.body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .with_context(|| format!("GET {url}"))
            .map(Some)
    }

    /// A blob's bytes, at most `d.size + 1` of them (the caller verifies size and digest).
    pub fn get_blob(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let url = self.url(&format!("blobs/{}", d.digest));
        let mut r = self.request("GET", &url, &[], None)?;
        if r.status().as_u16() != 200 {
            bail!(describe("GET", &url, &mut r));
        }
        // The size is the manifest's claim: reserve at most 64 MiB up front.
        let mut out = Vec::with_capacity(usize::try_from(d.size).unwrap_or(0).min(64 << 20));
        r.body_mut()
            .as_reader()
            .take(d.size.saturating_add(1))
            .read_to_end(&mut out)
            .with_context(|| format!("GET {url}"))?;
        Ok(out)
    }
}

/// A client for `r` with the credentials `username` (else the environment, else the
/// Docker config) gives; `insecure` allows plain HTTP, `push` asks for push access.
pub fn connect(
    r: &Reference,
    insecure: bool,
    username: Option<&str>,
    push: bool,
) -> Result<Client> {
    let creds = credentials(r, username)?;
    Ok(Client::new(r, insecure, creds, push))
}

/// Credentials for `r`: `--username` with `FUSE_REGISTRY_PASSWORD`, else the Docker config
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else none.
pub fn credentials(r: &Reference, username: Option<&str>) -> Result<Option<Credentials>> {
    let user = username
        .map(str::to_string)
        .or_else(|| std::env::var("FUSE_REGISTRY_USERNAME").ok())
        .filter(|u| !u.is_empty());
    if let Some(u) = user {
        let password = std::env::var("FUSE_REGISTRY_PASSWORD").with_context(|| {
            format!("--username {u}: set the password in FUSE_REGISTRY_PASSWORD")
        })?;
        return Ok(Some(Credentials {
            username: u,
            password,
        }));
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    if let Some(dir) = dir {
        if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
            return Ok(auth::from_docker_config(&text, &r.registry));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A loopback HTTP/1.1 server: `answer(request head, body)` gives (status line,
    /// headers); every request's head is recorded.
    fn server(
        answer: impl Fn(&str) -> (String, Vec<String>, Vec<u8>) + Send + 'static,
    ) -> (u16, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                log.lock().unwrap().push(head.clone());
                let (status, headers, body) = answer(&head);
                let mut out = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for h in headers {
                    out.push_str(&h);
                    out.push_str("\r\n");
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        (port, seen)
    }

    fn has_auth(head: &str) -> bool {
        head.to_ascii_lowercase().contains("\nauthorization:")
    }

    /// The defect: the registry's upload `Location` (and redirects) on another host got the
    /// stored Authorization header, leaking the user's Basic credentials.
    #[test]
    fn credentials_go_only_to_the_registry_origin() {
        let (other, other_seen) = server(|head| {
            if head.starts_with("PUT ") {
                ("201 Created".into(), vec![], vec![])
            } else {
                ("200 OK".into(), vec![], b"blob".to_vec())
            }
        });
        let (reg, reg_seen) = server(move |head| {
            if !has_auth(head) {
                return (
                    "401 Unauthorized".into(),
                    vec!["WWW-Authenticate: Basic realm=\"t\"".into()],
                    vec![],
                );
            }
            if head.starts_with("POST ") {
                (
                    "202 Accepted".into(),
                    vec![format!(
                        "Location: http://127.0.0.1:{other}/upload/1?state=x"
                    )],
                    vec![],
                )
            } else {
                (
                    "307 Temporary Redirect".into(),
                    vec![format!("Location: http://127.0.0.1:{other}/storage/blob")],
                    vec![],
                )
            }
        });
        let r = Reference::parse(&format!("127.0.0.1:{reg}/team/app:1")).unwrap();
        let creds = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let c = Client::new(&r, true, Some(creds), true);
        let digest = format!("sha256:{}", crate::digest::sha256_hex(b"blob"));
        c.upload_blob(&digest, b"blob").unwrap();
        let d = Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size: 4,
            annotations: Default::default(),
        };
        assert_eq!(c.get_blob(&d).unwrap(), b"blob");
        let reg_seen = reg_seen.lock().unwrap();
        // The registry itself was asked with credentials (after its challenge) ...
        assert!(
            reg_seen.iter().filter(|h| has_auth(h)).count() >= 2,
            "{reg_seen:?}"
        );
        // ... the other origin never.
        let other_seen = other_seen.lock().unwrap();
        assert_eq!(other_seen.len(), 2, "{other_seen:?}");
        for h in other_seen.iter() {
            assert!(!has_auth(h), "credentials sent to another origin:\n{h}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |u| origin(u).unwrap();
        assert_eq!(
            o("https://Reg.Example:443/v2/"),
            o("https://reg.example/x?y")
        );
        assert_eq!(o("http://h/v2"), o("http://h:80"));
        assert_ne!(o("http://h/v2"), o("https://h/v2"));
        assert_ne!(o("http://h:5000/v2"), o("http://h:5001/v2"));
        assert_ne!(o("https://reg.example/"), o("https://reg.example.evil/"));
        assert_eq!(o("http://[::1]:5000/v2").1, "[::1]");
        assert_eq!(o("http://[::1]/v2").2, 80);
        assert!(origin("https://user@reg.example/").is_none());
        assert!(origin("ftp://reg.example/").is_none());
        assert!(origin("/v2/x").is_none());
    }
}
