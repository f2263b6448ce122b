//! HTTP downloads: the only module that talks to the network. Retries with backoff,
//! size limits, progress on stderr for anything large.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Largest single download fuse asks for (a kernel package is under 100 MiB): a size
/// claimed by an index, a lock or a server beyond it is refused before any request, so
/// sizes from untrusted text never reach an allocation or an unchecked sum.
pub const MAX_DOWNLOAD: u64 = 4 << 30;

/// Downloads over HTTP(S) with retries.
pub struct Fetcher {
    agent: ureq::Agent,
    attempts: u32,
}

/// Why one attempt failed: worth retrying or not.
enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Fetcher {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(900)))
            .http_status_as_error(false)
            .user_agent(concat!("fuse/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent: config.into(),
            attempts: 4,
        }
    }

    /// GET `url` into memory. `expected_size`, when known, is enforced (a short or long
    /// body is an error: a truncated download never reaches the cache). `max_size` caps
    /// unknown sizes.
    pub fn get(&self, url: &str, expected_size: Option<u64>, max_size: u64) -> Result<Vec<u8>> {
        if let Some(n) = expected_size.filter(|&n| n > MAX_DOWNLOAD) {
            bail!("cannot download {url}: its index or lock claims {n} bytes (at most {MAX_DOWNLOAD})");
        }
        let mut delay = Duration::from_millis(500);
        let mut last = None;
        for attempt in 1..=self.attempts {
            match self.try_get(url, expected_size, max_size) {
                Ok(data) => return Ok(data),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => {
                    if attempt < self.attempts {
                        tracing::warn!(
                            "download of {url} failed (attempt {attempt}/{}): {e:#}; retrying",
                            self.attempts
                        );
                        std::thread::sleep(delay);
                        delay *= 3;
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .with_context(|| format!("cannot download {url}"))
    }

    fn try_get(
        &self,
        url: &str,
        expected_size: Option<u64>,
        max_size: u64,
    ) -> Result<Vec<u8>, Failure> {
        let mut resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| Failure::Retry(anyhow::anyhow!("{e}")))?;
        let status = resp.status().as_u16();
        if status >= 500 || status == 429 || status == 408 {
            return Err(Failure::Retry(anyhow::anyhow!(
                "server answered HTTP {status}"
            )));
        }
        if status != 200 {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "cannot download {url}: server answered HTTP {status}"
            )));
        }
        let limit = expected_size.unwrap_or(max_size);
        let total = expected_size.or(resp.body().content_length());
        let bar = progress_bar(url, total);
        let mut reader = resp.body_mut().as_reader().take(limit.saturating_add(1));
        // Sizes are claims (index, lock, server): reserve at most 64 MiB up front.
        let reserve = total.unwrap_or(0).min(limit).min(64 << 20);
        let mut data = Vec::with_capacity(reserve as usize);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| Failure::Retry(anyhow::anyhow!("reading the body: {e}")))?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if let Some(b) = &bar {
                b.set_position(data.len() as u64);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Some(want) = expected_size {
            if data.len() as u64 != want {
                return Err(Failure::Retry(anyhow::anyhow!(
                    "truncated or oversized download: expected {want} bytes, got {}",
                    data.len()
                )));
            }
        } else if data.len() as u64 > max_size {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "{url} is larger than the {max_size}-byte limit"
            )));
        }
        Ok(data)
    }
}

impl Fetcher {
    /// GET `url` (exactly `size` bytes) through a partial file that survives failures: each
    /// retry asks only for the bytes still missing (HTTP Range), so a large download cut
    /// short resumes instead of starting over. The partial file is removed on success.
    pub fn get_resumable(&self, url: &str, size: u64, partial: &Path) -> Result<Vec<u8>> {
        if size > MAX_DOWNLOAD {
            bail!(
                "cannot download {url}: its index or lock claims {size} bytes (at most {MAX_DOWNLOAD})"
            );
        }
        if let Some(dir) = partial.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut delay = Duration::from_millis(500);
        let mut last = None;
        for attempt in 1..=self.attempts {
            match self.try_resume(url, size, partial) {
                Ok(Some(data)) => {
                    let _ = std::fs::remove_file(partial);
                    return Ok(data);
                }
                Ok(None) => {
                    let got = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
                    last = Some(anyhow::anyhow!(
                        "truncated download: got {got} of {size} bytes"
                    ))
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => last = Some(e),
            }
            if attempt < self.attempts {
                if let Some(e) = &last {
                    tracing::warn!(
                        "download of {url} interrupted (attempt {attempt}/{}): {e:#}; resuming",
                        self.attempts
                    );
                }
                std::thread::sleep(delay);
                delay *= 3;
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .with_context(|| format!("cannot download {url}"))
    }

    /// One attempt: Ok(Some(bytes)) when complete, Ok(None) when still short.
    fn try_resume(&self, url: &str, size: u64, partial: &Path) -> Result<Option<Vec<u8>>, Failure> {
        let io = |e: std::io::Error| Failure::Fatal(anyhow::anyhow!("{}: {e}", partial.display()));
        let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > size {
            std::fs::remove_file(partial).map_err(io)?;
            have = 0;
        }
        if have < size {
            let mut req = self.agent.get(url);
            if have > 0 {
                req = req.header("Range", &format!("bytes={have}-"));
            }
            let mut resp = req
                .call()
                .map_err(|e| Failure::Retry(anyhow::anyhow!("{e}")))?;
            let status = resp.status().as_u16();
            let append = match status {
                206 => true,
                200 => false,
                416 => {
                    let _ = std::fs::remove_file(partial);
                    return Err(Failure::Retry(anyhow::anyhow!(
                        "server refused the range; starting over"
                    )));
                }
                s if s >= 500 || s == 429 || s == 408 => {
                    return Err(Failure::Retry(anyhow::anyhow!("server answered HTTP {s}")))
                }
                s => {
                    return Err(Failure::Fatal(anyhow::anyhow!(
                        "cannot download {url}: server answered HTTP {s}"
                    )))
                }
            };
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(partial)
                .map_err(io)?;
            let start = if append { have } else { 0 };
            let mut reader = resp
                .body_mut()
                .as_reader()
                .take(size.saturating_sub(start).saturating_add(1));
            // A read error is the network's (resumed on the next attempt); a write error is
            // the cache's disk (full, read-only): no retry helps, and it is named.
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = f.sync_all();
                        let got = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
                        return Err(Failure::Retry(anyhow::anyhow!(
                            "truncated download: got {got} of {size} bytes ({e})"
                        )));
                    }
                };
                std::io::Write::write_all(&mut f, &buf[..n]).map_err(|e| {
                    Failure::Fatal(anyhow::anyhow!("cannot write {}: {e}", partial.display()))
                })?;
            }
            f.sync_all().map_err(io)?;
        }
        let data = std::fs::read(partial).map_err(io)?;
        match (data.len() as u64).cmp(&size) {
            std::cmp::Ordering::Equal => Ok(Some(data)),
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Greater => {
                let _ = std::fs::remove_file(partial);
                Err(Failure::Retry(anyhow::anyhow!(
                    "oversized download: expected {size} bytes, got {}",
                    data.len()
                )))
            }
        }
    }
}

/// An overall progress bar in bytes for a batch of downloads (stderr, terminals only).
pub fn total_bar(total: u64) -> Option<indicatif::ProgressBar> {
    progress_bar("packages", Some(total))
}

fn progress_bar(url: &str, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let total = total?;
    if total < 4 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name);
    Some(bar)
}

/// Join a base URL and a relative path with exactly one slash.
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Refuse URLs that are not plain http(s).
pub fn check_url(url: &str) -> Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("{url:?} is not an http:// or https:// URL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-shot loopback server answering every request with `body`, claiming `claimed_len`.
    fn serve(body: &'static [u8], claimed_len: usize, requests: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..requests {
                let Ok((mut s, _)) = l.accept() else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {claimed_len}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(body);
            }
        });
        format!("http://{addr}/x")
    }

    #[test]
    fn downloads_exact_size() {
        let url = serve(b"0123456789", 10, 1);
        assert_eq!(
            Fetcher::new().get(&url, Some(10), 100).unwrap(),
            b"0123456789"
        );
    }

    #[test]
    fn truncated_download_is_an_error() {
        let url = serve(b"01234", 10, 8);
        let f = Fetcher {
            attempts: 2,
            ..Fetcher::new()
        };
        let e = format!("{:#}", f.get(&url, Some(10), 100).unwrap_err());
        assert!(
            e.contains("expected 10 bytes") || e.contains("reading the body"),
            "{e}"
        );
    }

    #[test]
    fn interrupted_download_resumes_with_a_range_request() {
        let body: &'static [u8] = b"0123456789abcdefghij";
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ranges.clone();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().take(2).enumerate() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let range = req
                    .lines()
                    .find(|l| l.starts_with("range:"))
                    .map(|l| l.trim().to_string());
                seen.lock().unwrap().push(range);
                if i == 0 {
                    // Promise everything, send half, hang up.
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(&body[..10]);
                } else {
                    let _ = write!(s, "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nConnection: close\r\n\r\n");
                    let _ = s.write_all(&body[10..]);
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.part");
        let f = Fetcher {
            attempts: 3,
            ..Fetcher::new()
        };
        let got = f
            .get_resumable(&format!("http://{addr}/x"), 20, &partial)
            .unwrap();
        assert_eq!(got, body);
        assert!(!partial.exists());
        let ranges = ranges.lock().unwrap();
        assert_eq!(ranges[0], None);
        assert_eq!(ranges[1].as_deref(), Some("range: bytes=10-"));
    }

    #[test]
    fn join_url_has_one_slash() {
        assert_eq!(
            join_url("http://m/debian/", "/dists/x"),
            "http://m/debian/dists/x"
        );
    }
}
