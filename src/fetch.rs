//! HTTP downloads: the only module that talks to the network. Retries with backoff,
//! size limits, progress on stderr for anything large.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::time::Duration;

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
        let mut reader = resp.body_mut().as_reader().take(limit + 1);
        let mut data = Vec::with_capacity(total.unwrap_or(0).min(limit) as usize);
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
    fn join_url_has_one_slash() {
        assert_eq!(
            join_url("http://m/debian/", "/dists/x"),
            "http://m/debian/dists/x"
        );
    }
}
