//! Signed calls to AWS APIs over `ureq`: credentials and endpoints the AWS way
//! (environment variables, `~/.aws` profiles, IMDSv2; `AWS_ENDPOINT_URL[_<SERVICE>]`),
//! a timeout on every call, retries with exponential backoff on throttling and 5xx, and a
//! clear error naming the call when AWS refuses the credentials or a permission.

use super::sigv4::{self, Credentials};
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Attempts of one call before its error is final.
const ATTEMPTS: u32 = 6;
/// First backoff; doubled each retry, capped at [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A region's client: one agent, one set of credentials.
pub struct Client {
    agent: ureq::Agent,
    pub region: String,
    creds: Credentials,
    /// An endpoint for every service (else [`endpoint`] from the environment).
    endpoint: Option<String>,
}

/// One answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The error codes AWS uses for throttling (retried like a 5xx).
fn throttled(status: u16, body: &str) -> bool {
    status == 429
        || status >= 500
        || [
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "RequestThrottled",
            "SlowDown",
        ]
        .iter()
        .any(|c| body.contains(&format!(">{c}<")) || body.contains(&format!("\"{c}\"")))
}

/// Whether AWS refused the credentials or the permission (not worth a retry).
fn refused(status: u16, body: &str) -> bool {
    status == 401
        || status == 403
        || [
            "AuthFailure",
            "ExpiredToken",
            "ExpiredTokenException",
            "UnauthorizedOperation",
            "AccessDenied",
            "AccessDeniedException",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
        ]
        .iter()
        .any(|c| body.contains(c))
}

/// The delay before retry `n` (0-based): 200 ms, 400 ms, ... at most 5 s.
pub fn backoff(n: u32) -> Duration {
    BACKOFF.saturating_mul(1 << n.min(10)).min(MAX_BACKOFF)
}

/// The endpoint of `service` ("ec2", "ebs", "elasticloadbalancing"): AWS_ENDPOINT_URL_<ID>,
/// else AWS_ENDPOINT_URL, else the public regional endpoint.
pub fn endpoint(service: &str, region: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let id = match service {
        "elasticloadbalancing" => "ELASTIC_LOAD_BALANCING_V2".to_string(),
        s => s.to_ascii_uppercase(),
    };
    env(&format!("AWS_ENDPOINT_URL_{id}"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"))
}

/// `[profile]`'s keys from an AWS credentials/config file (INI).
pub fn profile_keys(ini: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let (mut ak, mut sk, mut tok) = (None, None, None);
    for line in ini.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => ak = v,
                "aws_secret_access_key" => sk = v,
                "aws_session_token" => tok = v,
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key: ak?,
        secret_key: sk?,
        token: tok,
    })
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Credentials from the environment, then the shared credentials and config files'
/// profile (AWS_PROFILE, else "default"), then the instance's role through IMDSv2.
pub fn credentials(agent: &ureq::Agent) -> Result<Credentials> {
    if let (Some(a), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key: a,
            secret_key: s,
            token: env("AWS_SESSION_TOKEN"),
        });
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = env("HOME").unwrap_or_default();
    let files = [
        env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or(format!("{home}/.aws/credentials")),
        env("AWS_CONFIG_FILE").unwrap_or(format!("{home}/.aws/config")),
    ];
    for f in &files {
        if let Some(c) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| profile_keys(&t, &profile))
        {
            return Ok(c);
        }
    }
    imds(agent).with_context(|| {
        format!(
            "no AWS credentials: not in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not in profile \
             {profile:?} of {} or {}, and no instance role through IMDSv2",
            files[0], files[1]
        )
    })
}

/// The instance role's credentials through IMDSv2 (a session token first).
fn imds(agent: &ureq::Agent) -> Result<Credentials> {
    let base =
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    let base = base.trim_end_matches('/');
    let token = agent
        .put(&format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send_empty()?
        .body_mut()
        .read_to_string()?;
    let get = |path: &str| -> Result<String> {
        Ok(agent
            .get(&format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", &token)
            .call()?
            .body_mut()
            .read_to_string()?)
    };
    let role = get("/latest/meta-data/iam/security-credentials/")?;
    let role = role.lines().next().context("no instance role")?.trim();
    let j: serde_json::Value = serde_json::from_str(&get(&format!(
        "/latest/meta-data/iam/security-credentials/{role}"
    ))?)?;
    let s = |k: &str| j[k].as_str().map(str::to_string).context(k.to_string());
    Ok(Credentials {
        access_key: s("AccessKeyId")?,
        secret_key: s("SecretAccessKey")?,
        token: s("Token").ok(),
    })
}

impl Client {
    /// A client for `region` (else AWS_REGION / AWS_DEFAULT_REGION) with the caller's
    /// credentials.
    pub fn new(region: Option<&str>) -> Result<Client> {
        let region = region
            .map(str::to_string)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .context("no AWS region: set [env.NAME.aws] region or AWS_REGION")?;
        let imds_agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let creds = credentials(&imds_agent)?;
        Ok(Client::with(region, creds, None))
    }

    /// A client with explicit credentials and, optionally, one endpoint for every service.
    pub fn with(region: String, creds: Credentials, endpoint: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent(format!("fuse/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            region,
            creds,
            endpoint,
        }
    }

    /// One signed request, retried on throttling, 5xx and transport errors; `call` names
    /// the API call in every error ("ec2:RunInstances").
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        call: &str,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer> {
        let base = match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => endpoint(service, &self.region, env),
        };
        let mut last = String::new();
        for n in 0..ATTEMPTS {
            if n > 0 {
                std::thread::sleep(backoff(n - 1));
            }
            match self.once(&base, service, method, path, headers, body) {
                Ok(a) if a.status < 300 => return Ok(a),
                Ok(a) => {
                    let text = String::from_utf8_lossy(&a.body).into_owned();
                    if refused(a.status, &text) {
                        bail!(
                            "{call}: AWS refused the request (HTTP {}): expired or invalid \
                             credentials, or a missing permission for {call}: {}",
                            a.status,
                            text.trim()
                        );
                    }
                    if !throttled(a.status, &text) {
                        bail!("{call}: HTTP {}: {}", a.status, text.trim());
                    }
                    tracing::debug!("{call}: HTTP {} (attempt {}), retrying", a.status, n + 1);
                    last = format!("HTTP {}: {}", a.status, text.trim());
                }
                Err(e) => {
                    tracing::debug!("{call}: {e:#} (attempt {}), retrying", n + 1);
                    last = format!("{e:#}");
                }
            }
        }
        bail!("{call}: gave up after {ATTEMPTS} attempts: {last}")
    }

    fn once(
        &self,
        base: &str,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer> {
        let host = base
            .split_once("://")
            .map_or(base, |(_, r)| r)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let date = sigv4::amz_date(now);
        let mut h: Vec<(String, String)> = headers.to_vec();
        h.push(("host".into(), host));
        h.push(("x-amz-date".into(), date.clone()));
        if let Some(t) = &self.creds.token {
            h.push(("x-amz-security-token".into(), t.clone()));
        }
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let query: Vec<(String, String)> = q
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let req = sigv4::Request {
            method,
            path: p,
            query: &query,
            headers: &h,
            body,
        };
        let auth = sigv4::authorization(&req, &self.creds, &self.region, service, &date);
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        for (k, v) in h.iter().filter(|(k, _)| k != "host") {
            b = b.header(k.as_str(), v.as_str());
        }
        b = b.header("authorization", auth);
        let req = b.body(body).context("bad request")?;
        let mut r = self.agent.run(req)?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .unwrap_or_default();
        Ok(Answer { status, body })
    }

    /// A query API call (EC2 2016-11-15, ELBv2 2015-12-01): form-encoded POST, XML answer.
    pub fn query(
        &self,
        service: &str,
        action: &str,
        params: &[(String, String)],
    ) -> Result<String> {
        let version = match service {
            "ec2" => "2016-11-15",
            _ => "2015-12-01",
        };
        let mut form = format!("Action={action}&Version={version}");
        for (k, v) in params {
            form.push_str(&format!(
                "&{}={}",
                sigv4::uri_encode(k),
                sigv4::uri_encode(v)
            ));
        }
        let h = [(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let a = self.send(
            &format!("{service}:{action}"),
            service,
            "POST",
            "/",
            &h,
            form.as_bytes(),
        )?;
        Ok(String::from_utf8_lossy(&a.body).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_profiles_and_backoff() {
        let none = |_: &str| None;
        assert_eq!(
            endpoint("ebs", "eu-west-1", none),
            "https://ebs.eu-west-1.amazonaws.com"
        );
        let local =
            |k: &str| (k == "AWS_ENDPOINT_URL").then(|| "http://127.0.0.1:5000/".to_string());
        assert_eq!(endpoint("ec2", "eu-west-1", local), "http://127.0.0.1:5000");
        let ini = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\
                   [profile ci]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        assert_eq!(profile_keys(ini, "default").unwrap().access_key, "A");
        let ci = profile_keys(ini, "ci").unwrap();
        assert_eq!(
            (ci.secret_key.as_str(), ci.token.as_deref()),
            ("T", Some("X"))
        );
        assert!(profile_keys(ini, "other").is_none());
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(20), MAX_BACKOFF);
        assert!(throttled(400, "<Code>RequestLimitExceeded</Code>"));
        assert!(throttled(503, ""));
        assert!(!throttled(400, "<Code>InvalidParameter</Code>"));
        assert!(refused(400, "<Code>AuthFailure</Code>"));
        assert!(refused(403, ""));
    }

    /// A local HTTP server answering the scripted (status, body) pairs in order, one per
    /// connection; returns its URL and a counter of the requests it read.
    fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = n.clone();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head and the (small) body.
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..k]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, n)
    }

    fn test_client(url: String) -> Client {
        Client::with(
            "eu-west-1".into(),
            Credentials {
                access_key: "AKID".into(),
                secret_key: "s".into(),
                token: None,
            },
            Some(url),
        )
    }

    #[test]
    fn throttling_and_5xx_are_retried_then_answered() {
        let (url, n) = scripted(vec![
            (503, ""),
            (400, "<Code>RequestLimitExceeded</Code>"),
            (200, "<ok/>"),
        ]);
        let c = test_client(url);
        let a = c.query("ec2", "DescribeInstances", &[]).unwrap();
        assert_eq!(a, "<ok/>");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn an_expired_credential_is_not_retried_and_names_the_call() {
        let (url, n) =
            scripted(vec![
            (400, "<Response><Errors><Error><Code>ExpiredToken</Code></Error></Errors></Response>"),
            (200, "<ok/>"),
        ]);
        let c = test_client(url);
        let e = format!("{:#}", c.query("ec2", "RunInstances", &[]).unwrap_err());
        assert!(
            e.contains("ec2:RunInstances") && e.contains("ExpiredToken"),
            "{e}"
        );
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
