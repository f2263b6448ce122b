//! Registry authentication, the pure parts: `WWW-Authenticate` challenges (Basic and the
//! Bearer token flow of the distribution spec), the token request URL and answer, Basic
//! credentials (base64), and credentials from a Docker `config.json` (`auths.<host>.auth`).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization` header value for Basic auth.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            base64_encode(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased scheme: `basic` or `bearer` (others are reported as unsupported).
    pub scheme: String,
    /// Lower-cased parameter names -> values (quotes and escapes removed).
    pub params: BTreeMap<String, String>,
}

/// Parses the first challenge of a `WWW-Authenticate` value, e.g.
/// `Bearer realm="https://auth.example.com/token",service="reg",scope="repository:a:pull"`.
pub fn parse_challenge(header: &str) -> Result<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        bail!("empty WWW-Authenticate header");
    }
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        if key.contains(|c: char| c.is_ascii_whitespace()) {
            break; // the next challenge's scheme: only the first is read
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end.context("unterminated quoted value in WWW-Authenticate")?;
            value = v;
            rest = &q[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.insert(key.to_ascii_lowercase(), value);
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    Ok(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token endpoint URL for a Bearer challenge: `realm?service=...&scope=...`. The
/// challenge's scope wins; `default_scope` is used when it has none. The realm must be
/// https unless plain HTTP is allowed.
pub fn token_url(c: &Challenge, default_scope: &str, insecure: bool) -> Result<String> {
    let realm = c
        .params
        .get("realm")
        .context("the Bearer challenge has no realm")?;
    if !(realm.starts_with("https://") || insecure && realm.starts_with("http://")) {
        bail!("token realm {realm:?} is not an https URL (use --insecure to allow plain HTTP)");
    }
    let mut url = realm.clone();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    if let Some(s) = c.params.get("service") {
        url.push_str(&format!("{sep}service={}", urlencode(s)));
        sep = '&';
    }
    let scope = c
        .params
        .get("scope")
        .map(String::as_str)
        .unwrap_or(default_scope);
    if !scope.is_empty() {
        url.push_str(&format!("{sep}scope={}", urlencode(scope)));
    }
    Ok(url)
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's `access_token`).
pub fn parse_token(body: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the token answer is not JSON")?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .context("the token answer has no token")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional, white space ignored).
pub fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|b| !b.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c).context("not base64")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Credentials for `registry` from a Docker `config.json` text (`auths.<host>.auth`, base64
/// `user:password`; keys may carry a scheme or path). Credential helpers are not run.
pub fn from_docker_config(json: &str, registry: &str) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let host_of = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let wanted = if registry == "docker.io" {
        vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    };
    for (k, entry) in auths {
        if !wanted.contains(&host_of(k).as_str()) {
            continue;
        }
        let auth = entry.get("auth")?.as_str()?;
        let raw = base64_decode(auth).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        return Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/hello:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example.com/token");
        assert_eq!(c.params["scope"], "repository:team/hello:pull,push");
        let url = token_url(&c, "x", false).unwrap();
        assert_eq!(
            url,
            "https://auth.example.com/token?service=registry.example.com&scope=repository%3Ateam%2Fhello%3Apull%2Cpush"
        );
        let b = parse_challenge("Basic realm=\"basic-realm\"").unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "basic-realm");
        let odd =
            parse_challenge(r#"bearer realm="http://h/t?x=1", error="insufficient \"scope\"""#)
                .unwrap();
        assert_eq!(odd.params["error"], "insufficient \"scope\"");
        assert!(token_url(&odd, "s", false).is_err(), "plain http realm");
        assert_eq!(
            token_url(&odd, "repository:a:pull", true).unwrap(),
            "http://h/t?x=1&scope=repository%3Aa%3Apull"
        );
        assert!(parse_challenge("Bearer realm=\"unterminated").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
        assert!(base64_decode("Zm9v!").is_err());
        let c = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        assert_eq!(c.basic_header(), "Basic YWxpY2U6czNjcmV0");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn tokens_and_docker_config() {
        assert_eq!(
            parse_token(br#"{"token":"abc","expires_in":60}"#).unwrap(),
            "abc"
        );
        assert_eq!(parse_token(br#"{"access_token":"xyz"}"#).unwrap(), "xyz");
        assert!(parse_token(br#"{"token":""}"#).is_err());
        let cfg = r#"{"auths":{"https://reg.example.com/v1/":{"auth":"YWxpY2U6czNjcmV0"},
                     "other:5000":{"auth":"Ym9iOnB3"}}}"#;
        let c = from_docker_config(cfg, "reg.example.com").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(
            from_docker_config(cfg, "other:5000").unwrap().username,
            "bob"
        );
        assert!(from_docker_config(cfg, "nope.example.com").is_none());
    }
}
