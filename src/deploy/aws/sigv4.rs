//! AWS Signature Version 4 (the `Authorization` header every AWS API takes), written over
//! `hmac` + `sha2`: canonical request -> string to sign -> HMAC chain of date, region,
//! service, `aws4_request` -> signature. Pure: the caller passes the time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// An access key, its secret and the session token of temporary credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub token: Option<String>,
}

/// What is signed: method, path (already URI-encoded), the query string's (name, value)
/// pairs (raw), the headers (name, value) to sign, and the body.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// RFC 3986 unreserved characters stay, everything else is %XX (upper case), as SigV4's
/// canonical query string wants.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex_sha256(b: &[u8]) -> String {
    crate::digest::hex(&Sha256::digest(b))
}

/// The canonical request and the list of signed header names.
fn canonical(r: &Request) -> (String, String) {
    let mut q: Vec<(String, String)> = r
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    q.sort();
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    h.sort();
    let signed = h
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let c = format!(
        "{}\n{}\n{query}\n{headers}\n{signed}\n{}",
        r.method,
        r.path,
        hex_sha256(r.body)
    );
    (c, signed)
}

/// The `Authorization` header value for `r` at `amz_date` (`YYYYMMDDTHHMMSSZ`, also sent as
/// the signed `x-amz-date` header).
pub fn authorization(
    r: &Request,
    c: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let day = &amz_date[..8.min(amz_date.len())];
    let (creq, signed) = canonical(r);
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(creq.as_bytes())
    );
    let k = hmac(format!("AWS4{}", c.secret_key).as_bytes(), day.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let sig = crate::digest::hex(&hmac(&k, sts.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
        c.access_key
    )
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC): the ledger's RFC 3339 form without separators.
pub fn amz_date(unix: u64) -> String {
    crate::ledger::rfc3339(unix).replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Credentials {
        Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    /// AWS's SigV4 test suite, "get-vanilla".
    #[test]
    fn get_vanilla_vector() {
        let h = [
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        let r = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &h,
            body: b"",
        };
        assert_eq!(
            authorization(&r, &example(), "us-east-1", "service", "20150830T123600Z"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// A form-encoded query API POST, the signature botocore computes for the same request.
    #[test]
    fn query_api_post_matches_botocore() {
        let h = [
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            (
                "Host".to_string(),
                "ec2.eu-west-1.amazonaws.com".to_string(),
            ),
            ("X-Amz-Date".to_string(), "20261207T040000Z".to_string()),
        ];
        let r = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &h,
            body: b"Action=DescribeImages&Version=2016-11-15",
        };
        let a = authorization(&r, &example(), "eu-west-1", "ec2", "20261207T040000Z");
        assert!(
            a.ends_with(
                "Signature=cde56b75b507ef6584eae6af2a69673979afe1ee0e95dbe65f9e4d1cabcbec5f"
            ),
            "{a}"
        );
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(uri_encode("a b/c=d~"), "a%20b%2Fc%3Dd~");
    }
}
