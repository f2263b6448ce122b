//! Debian `InRelease` files: OpenPGP clear-signed `Release` files, verified
//! against a keyring, then parsed.
//!
//! A `Release` file is one deb822 paragraph describing a suite. Fields used:
//! - `Origin`, `Suite` (e.g. `stable`), `Codename` (e.g. `bookworm`);
//! - `Date`: when the file was made, and `Valid-Until`: after which a client
//!   must refuse it (replay protection); both RFC 2822-style dates such as
//!   `Sat, 11 Jul 2026 10:16:37 UTC`;
//! - `Architectures`, `Components`: space-separated lists;
//! - `Acquire-By-Hash: yes`: indexes can also be fetched from
//!   `<dir>/by-hash/SHA256/<hash>`;
//! - `SHA256`: one line per index file, ` <sha256 hex> <size> <path>`, the path
//!   relative to the `dists/<suite>/` directory. `MD5Sum` and `SHA1` are ignored.
//!
//! `InRelease` is the same text wrapped in the cleartext signature framework
//! (RFC 9580 section 7): `-----BEGIN PGP SIGNED MESSAGE-----`, `Hash:` armor
//! headers, a blank line, the dash-escaped text, then an armored
//! `PGP SIGNATURE` block holding one or more signatures (Debian signs with
//! two keys). Only the signed text is ever parsed.

use super::packages::{check_relative_path, field, parse_deb822};
use anyhow::{bail, Context, Result};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{PublicKey, PublicSubkey, Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, Tag, Timestamp};
use std::collections::BTreeMap;

/// A set of trusted OpenPGP public keys (the archive keyring), with each
/// key's signing-capable components (primary key and subkeys) already checked
/// for valid self-signatures, revocations and expiry dates.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<KeyEntry>,
    /// Keys that could not be parsed, with the reason (kept for diagnostics).
    skipped: Vec<String>,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    /// Primary key ID, 16 upper-case hex digits.
    id: String,
    components: Vec<Component>,
}

#[derive(Debug, Clone)]
enum ComponentKey {
    Primary(PublicKey),
    Sub(PublicSubkey),
}

/// A key (primary or subkey) that may make data signatures.
#[derive(Debug, Clone)]
struct Component {
    key: ComponentKey,
    /// Key ID, 16 upper-case hex digits.
    id: String,
    /// Fingerprint, upper-case hex.
    fingerprint: String,
    created: i64,
    /// Unix time at which the key stops being valid (None: never).
    expires: Option<i64>,
    /// Why this key may not be used for signatures at all (revoked, no
    /// binding, not signing-capable), if so.
    unusable: Option<String>,
}

impl Component {
    fn check_time(&self, t: i64, what: &str) -> std::result::Result<(), String> {
        if t < self.created {
            return Err(format!(
                "key {} was created after the {what} ({})",
                self.id,
                format_date(t)
            ));
        }
        if let Some(exp) = self.expires {
            if t >= exp {
                return Err(format!(
                    "key {} expired on {} (before the {what}, {})",
                    self.id,
                    format_date(exp),
                    format_date(t)
                ));
            }
        }
        Ok(())
    }

    fn verify(&self, sig: &Signature, data: &[u8]) -> pgp::errors::Result<()> {
        match &self.key {
            ComponentKey::Primary(k) => sig.verify(k, data),
            ComponentKey::Sub(k) => sig.verify(k, data),
        }
    }
}

fn key_id_hex(k: &impl KeyDetails) -> String {
    k.legacy_key_id().to_string().to_ascii_uppercase()
}

fn ts(t: Timestamp) -> i64 {
    i64::from(t.as_secs())
}

/// Expiry of a key created at `created` per the self-signature `sig`
/// (a Key Expiration Time of 0 means "never").
fn expiry_from(sig: &Signature, created: i64) -> Option<i64> {
    sig.key_expiration_time()
        .map(|d| i64::from(d.as_secs()))
        .filter(|&d| d > 0)
        .map(|d| created + d)
}

fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

fn created_of(sig: &Signature) -> i64 {
    sig.created().map(ts).unwrap_or(i64::MIN)
}

fn evaluate_key(key: &SignedPublicKey) -> KeyEntry {
    let primary = &key.primary_key;
    let pid = key_id_hex(primary);
    let pcreated = ts(primary.created_at());

    let revoked =
        key.details.revocation_signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
        });

    // The newest valid self-signature carries the primary key's flags and expiry.
    let mut self_sigs: Vec<&Signature> = Vec::new();
    for user in &key.details.users {
        for s in &user.signatures {
            if s.typ() != Some(SignatureType::CertRevocation)
                && s.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            {
                self_sigs.push(s);
            }
        }
    }
    for s in &key.details.direct_signatures {
        if s.typ() == Some(SignatureType::Key) && s.verify_key(primary).is_ok() {
            self_sigs.push(s);
        }
    }
    let latest = self_sigs.into_iter().max_by_key(|s| created_of(s));

    let primary_problem = if revoked {
        Some(format!("key {pid} is revoked"))
    } else if latest.is_none() {
        Some(format!("key {pid} has no valid self-signature"))
    } else {
        None
    };
    let primary_expires = latest.and_then(|s| expiry_from(s, pcreated));

    let mut components = Vec::new();
    let primary_can_sign = latest.is_some_and(|s| !has_key_flags(s) || s.key_flags().sign());
    components.push(Component {
        key: ComponentKey::Primary(primary.clone()),
        id: pid.clone(),
        fingerprint: format!("{:X}", primary.fingerprint()),
        created: pcreated,
        expires: primary_expires,
        unusable: primary_problem.clone().or_else(|| {
            (!primary_can_sign).then(|| format!("key {pid} is not marked for signing"))
        }),
    });

    for sub in &key.public_subkeys {
        let sid = key_id_hex(&sub.key);
        let screated = ts(sub.key.created_at());
        let sub_revoked = sub.signatures.iter().any(|s| {
            s.typ() == Some(SignatureType::SubkeyRevocation)
                && s.verify_subkey_binding(primary, &sub.key).is_ok()
        });
        let binding = sub
            .signatures
            .iter()
            .filter(|s| {
                s.typ() == Some(SignatureType::SubkeyBinding)
                    && s.verify_subkey_binding(primary, &sub.key).is_ok()
            })
            .max_by_key(|s| created_of(s));
        let unusable = if let Some(p) = &primary_problem {
            Some(format!("subkey {sid}: primary {p}"))
        } else if sub_revoked {
            Some(format!("subkey {sid} of {pid} is revoked"))
        } else {
            match binding {
                None => Some(format!(
                    "subkey {sid} of {pid} has no valid binding signature"
                )),
                Some(b) if !b.key_flags().sign() => {
                    // Not a signing subkey (e.g. encryption): not a candidate.
                    continue;
                }
                Some(b) => match b.embedded_signature() {
                    None => Some(format!(
                        "signing subkey {sid} of {pid} has no primary key binding (back) signature"
                    )),
                    Some(back) => back
                        .verify_primary_key_binding(&sub.key, primary)
                        .err()
                        .map(|e| {
                            format!(
                                "signing subkey {sid} of {pid} has an invalid back signature: {e}"
                            )
                        }),
                },
            }
        };
        let sub_expires = binding.and_then(|b| expiry_from(b, screated));
        let expires = match (sub_expires, primary_expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        components.push(Component {
            key: ComponentKey::Sub(sub.key.clone()),
            id: sid,
            fingerprint: format!("{:X}", sub.key.fingerprint()),
            created: screated,
            expires,
            unusable,
        });
    }
    KeyEntry {
        id: pid,
        components,
    }
}

impl Keyring {
    /// Parse a keyring: binary OpenPGP packets (a `.gpg` keyring file, several
    /// keys concatenated) or one or more ASCII-armored public key blocks.
    /// Keys that fail to parse are skipped (and named in verification
    /// errors); a keyring with no usable key at all is an error.
    pub fn from_bytes(data: &[u8]) -> Result<Keyring> {
        let start = data
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(data.len());
        let armored = data[start..].starts_with(b"-----BEGIN PGP");
        let mut parsed: Vec<pgp::errors::Result<SignedPublicKey>> = Vec::new();
        if armored {
            let text = std::str::from_utf8(data).context("armored keyring is not UTF-8")?;
            const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
            const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
            let mut rest = text;
            let mut blocks = 0;
            while let Some(b) = rest.find(BEGIN) {
                let Some(e) = rest[b..].find(END) else {
                    bail!("armored keyring: public key block without an END line");
                };
                let block = &rest[b..b + e + END.len()];
                rest = &rest[b + e + END.len()..];
                blocks += 1;
                match SignedPublicKey::from_armor_many(block.as_bytes()) {
                    Ok((iter, _)) => parsed.extend(iter.take(10_000)),
                    Err(e) => parsed.push(Err(e)),
                }
            }
            if blocks == 0 {
                bail!("armored keyring has no \"{BEGIN}\" block");
            }
        } else {
            let iter = SignedPublicKey::from_bytes_many(data)
                .map_err(|e| anyhow::anyhow!("keyring: {e}"))?;
            parsed.extend(iter.take(10_000));
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, k) in parsed.into_iter().enumerate() {
            match k {
                Ok(k) => keys.push(evaluate_key(&k)),
                Err(e) => skipped.push(format!("key #{}: {e}", i + 1)),
            }
        }
        if keys.is_empty() {
            if skipped.is_empty() {
                bail!("keyring contains no OpenPGP public key");
            }
            bail!(
                "keyring contains no usable OpenPGP public key ({})",
                skipped.join("; ")
            );
        }
        Ok(Keyring { keys, skipped })
    }

    /// Each key as "PRIMARYID" or "PRIMARYID (signing subkeys A, B)".
    fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| {
                let subs: Vec<&str> = k
                    .components
                    .iter()
                    .filter(|c| matches!(c.key, ComponentKey::Sub(_)))
                    .map(|c| c.id.as_str())
                    .collect();
                if subs.is_empty() {
                    k.id.clone()
                } else {
                    format!("{} (signing subkeys {})", k.id, subs.join(", "))
                }
            })
            .collect()
    }

    /// Primary key IDs (16 upper-case hex digits), in keyring order.
    #[cfg(test)]
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn components(&self) -> impl Iterator<Item = &Component> {
        self.keys.iter().flat_map(|k| k.components.iter())
    }
}

/// One index file listed in the `SHA256` field of a Release file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the suite directory, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// The parsed (signed) content of a Release file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub origin: Option<String>,
    pub suite: Option<String>,
    pub codename: Option<String>,
    /// `Date` as written.
    pub date: Option<String>,
    pub date_unix: Option<i64>,
    /// `Valid-Until`, in unix seconds.
    pub valid_until_unix: Option<i64>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// `Acquire-By-Hash: yes`.
    pub acquire_by_hash: bool,
    /// Files from the `SHA256` field only, keyed by path.
    pub files: BTreeMap<String, FileEntry>,
}

impl Release {
    /// The by-hash path of a listed file: `<dir>/by-hash/SHA256/<sha256>`.
    #[cfg(test)]
    pub fn by_hash_path(entry: &FileEntry) -> String {
        match entry.path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/by-hash/SHA256/{}", entry.sha256),
            None => format!("by-hash/SHA256/{}", entry.sha256),
        }
    }
}

/// What [`verify_inrelease`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The current time (unix seconds), given by the caller: checked against
    /// `Valid-Until`, `Date`, key and signature expiry.
    pub now_unix: i64,
    /// Also accept a plain, unsigned Release file (never a signed one whose
    /// signature does not verify).
    pub allow_unsigned: bool,
    /// Accept a Release past its `Valid-Until` (or dated in the future), and
    /// keys or signatures that have expired since the file was signed.
    pub allow_expired: bool,
}

/// Verify an `InRelease` file against `keyring` and parse its signed text.
///
/// At least one signature must be valid, made by a signing-capable, unrevoked
/// key of the keyring (primary key or subkey) that was valid when the
/// signature was made and still is now (unless `allow_expired`), with a hash
/// stronger than SHA-1. Text outside the signed part is refused by the
/// parser and never read. Then `Valid-Until` must be after `now_unix` and
/// `Date` not after it (unless `allow_expired`).
pub fn verify_inrelease(
    inrelease: &[u8],
    keyring: &Keyring,
    opts: &VerifyOptions,
) -> Result<Release> {
    let text = std::str::from_utf8(inrelease).context("InRelease is not valid UTF-8")?;
    let armored = text.lines().any(|l| l.starts_with("-----BEGIN PGP"));
    let release = if !armored {
        if !opts.allow_unsigned {
            bail!(
                "InRelease is not signed (no OpenPGP armor); refusing an unsigned Release file \
                 (unsigned archives must be allowed explicitly)"
            );
        }
        parse_release(text).context("unsigned Release file")?
    } else {
        let signed = verify_signed_text(text, keyring, opts)?;
        parse_release(&signed).context("signed text of InRelease")?
    };
    check_dates(&release, opts)?;
    Ok(release)
}

fn check_dates(r: &Release, opts: &VerifyOptions) -> Result<()> {
    if opts.allow_expired {
        return Ok(());
    }
    if let Some(vu) = r.valid_until_unix {
        if opts.now_unix >= vu {
            bail!(
                "Release file expired on {} (Valid-Until; now is {}): the mirror is stale or \
                 the file was replayed",
                format_date(vu),
                format_date(opts.now_unix)
            );
        }
    }
    if let Some(d) = r.date_unix {
        if d > opts.now_unix {
            bail!(
                "Release file is not valid yet: its Date {} is after now ({})",
                format_date(d),
                format_date(opts.now_unix)
            );
        }
    }
    Ok(())
}

/// Issuer key IDs named in a signature (from Issuer and Issuer Fingerprint
/// subpackets).
fn issuer_ids(sig: &Signature) -> Vec<String> {
    let mut ids: Vec<String> = sig
        .issuer_key_id()
        .iter()
        .map(|k| k.to_string().to_ascii_uppercase())
        .collect();
    for fp in sig.issuer_fingerprint() {
        let hex = format!("{fp:X}");
        // v4: the key ID is the fingerprint's low 64 bits; v6: its high 64 bits.
        let id = if hex.len() == 40 {
            hex.get(24..)
        } else {
            hex.get(..16)
        };
        ids.push(id.unwrap_or(&hex).to_string());
    }
    ids.sort();
    ids.dedup();
    ids
}

fn verify_signed_text(text: &str, keyring: &Keyring, opts: &VerifyOptions) -> Result<String> {
    let (msg, _headers) = CleartextSignedMessage::from_string(text)
        .map_err(|e| anyhow::anyhow!("InRelease is not a well-formed clear-signed message: {e}"))?;
    if msg.signatures().is_empty() {
        bail!("InRelease has no signature");
    }
    let signed = msg.signed_text();
    let mut signers: Vec<String> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut good = false;
    for (i, sig) in msg.signatures().iter().enumerate() {
        let ids = issuer_ids(sig);
        let label = if ids.is_empty() {
            format!("signature {} (no issuer)", i + 1)
        } else {
            format!("signature {} by {}", i + 1, ids.join("/"))
        };
        signers.push(if ids.is_empty() {
            "(unknown)".to_string()
        } else {
            ids.join("/")
        });
        match sig.typ() {
            Some(SignatureType::Text) | Some(SignatureType::Binary) => {}
            other => {
                reasons.push(format!("{label}: not a document signature ({other:?})"));
                continue;
            }
        }
        match sig.hash_alg() {
            Some(HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160) | None => {
                reasons.push(format!(
                    "{label}: weak or unknown hash algorithm {:?}",
                    sig.hash_alg()
                ));
                continue;
            }
            Some(_) => {}
        }
        let Some(created) = sig.created().map(ts) else {
            reasons.push(format!("{label}: no creation time"));
            continue;
        };
        if let Some(exp) = sig.signature_expiration_time() {
            let exp = i64::from(exp.as_secs());
            if exp > 0 && opts.now_unix >= created + exp && !opts.allow_expired {
                reasons.push(format!(
                    "{label}: signature expired on {}",
                    format_date(created + exp)
                ));
                continue;
            }
        }
        let candidates: Vec<&Component> = keyring
            .components()
            .filter(|c| {
                ids.is_empty()
                    || ids.contains(&c.id)
                    || sig
                        .issuer_fingerprint()
                        .iter()
                        .any(|fp| format!("{fp:X}") == c.fingerprint)
            })
            .collect();
        if candidates.is_empty() {
            reasons.push(format!("{label}: no key in the keyring has this ID"));
            continue;
        }
        for c in candidates {
            if let Some(why) = &c.unusable {
                reasons.push(format!("{label}: {why}"));
                continue;
            }
            if let Err(why) = c.check_time(created, "signature date") {
                reasons.push(format!("{label}: {why}"));
                continue;
            }
            if !opts.allow_expired {
                if let Err(why) = c.check_time(opts.now_unix, "current date") {
                    reasons.push(format!("{label}: {why}"));
                    continue;
                }
            }
            match c.verify(sig, signed.as_bytes()) {
                Ok(()) => good = true,
                Err(e) => reasons.push(format!("{label}: bad signature with key {}: {e}", c.id)),
            }
        }
    }
    if !good {
        let mut msg = format!(
            "InRelease signature does not verify against the keyring (signed by key IDs {}; \
             keyring has {})",
            signers.join(", "),
            keyring.describe().join(", ")
        );
        if !reasons.is_empty() {
            msg.push_str(": ");
            msg.push_str(&reasons.join("; "));
        }
        if !keyring.skipped.is_empty() {
            msg.push_str(&format!(
                " [keys skipped while reading the keyring: {}]",
                keyring.skipped.join("; ")
            ));
        }
        bail!(msg);
    }
    Ok(signed.replace("\r\n", "\n"))
}

/// Parse the (unsigned) text of a Release file. It must be a single
/// paragraph with a `SHA256` field.
pub fn parse_release(text: &str) -> Result<Release> {
    let mut paras = parse_deb822(text)?;
    if paras.len() != 1 {
        bail!(
            "a Release file is one paragraph, this one has {}",
            paras.len()
        );
    }
    let p = paras.remove(0);
    let get = |n: &str| field(&p, n).map(str::to_string);
    let date = get("Date");
    let date_unix = match &date {
        Some(d) => Some(parse_date(d).with_context(|| format!("field Date: {d:?}"))?),
        None => None,
    };
    let valid_until_unix = match field(&p, "Valid-Until") {
        Some(d) => Some(parse_date(d).with_context(|| format!("field Valid-Until: {d:?}"))?),
        None => None,
    };
    let list = |n: &str| -> Vec<String> {
        field(&p, n)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let Some(sums) = field(&p, "SHA256") else {
        bail!("Release file has no SHA256 field (MD5Sum and SHA1 alone are not trusted)");
    };
    let mut files = BTreeMap::new();
    for line in sums.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [hash, size, path] = parts[..] else {
            bail!("field SHA256: expected \"<sha256> <size> <path>\", got {line:?}");
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("field SHA256: bad hash {hash:?} for {path}");
        }
        let size: u64 = size
            .parse()
            .with_context(|| format!("field SHA256: bad size {size:?} for {path}"))?;
        check_relative_path(path).context("field SHA256")?;
        let entry = FileEntry {
            path: path.to_string(),
            size,
            sha256: hash.to_ascii_lowercase(),
        };
        if files.insert(path.to_string(), entry).is_some() {
            bail!("field SHA256: {path} is listed twice");
        }
    }
    Ok(Release {
        origin: get("Origin"),
        suite: get("Suite"),
        codename: get("Codename"),
        date,
        date_unix,
        valid_until_unix,
        architectures: list("Architectures"),
        components: list("Components"),
        acquire_by_hash: field(&p, "Acquire-By-Hash")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        files,
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parse an RFC 2822-style date as used in Release files, e.g.
/// `Sat, 11 Jul 2026 10:16:37 UTC`, into unix seconds. The weekday is
/// optional; the zone is `UTC`, `GMT`, `UT`, `Z` or a `+hhmm`/`-hhmm` offset.
pub fn parse_date(s: &str) -> Result<i64> {
    let mut toks: Vec<&str> = s.split_whitespace().collect();
    if let Some(first) = toks.first() {
        if let Some(day) = first.strip_suffix(',') {
            if !DAYS.iter().any(|d| d.eq_ignore_ascii_case(day)) {
                bail!("unknown weekday {day:?}");
            }
            toks.remove(0);
        }
    }
    let [day, mon, year, time, zone] = toks[..] else {
        bail!("expected \"[Day,] DD Mon YYYY HH:MM:SS ZONE\"");
    };
    let num = |t: &str, what: &str, max_len: usize| -> Result<i64> {
        if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_digit()) {
            bail!("bad {what} {t:?}");
        }
        Ok(t.parse::<i64>()?)
    };
    let d = num(day, "day", 2)?;
    let m = MONTHS
        .iter()
        .position(|x| x.eq_ignore_ascii_case(mon))
        .with_context(|| format!("unknown month {mon:?}"))? as i64
        + 1;
    if year.len() != 4 {
        bail!("bad year {year:?}");
    }
    let y = num(year, "year", 4)?;
    if d < 1 || d > days_in_month(y, m) {
        bail!("day {d} out of range for {mon} {y}");
    }
    let hms: Vec<&str> = time.split(':').collect();
    let (h, mi, se) = match hms[..] {
        [h, mi, se] => (
            num(h, "hour", 2)?,
            num(mi, "minute", 2)?,
            num(se, "second", 2)?,
        ),
        [h, mi] => (num(h, "hour", 2)?, num(mi, "minute", 2)?, 0),
        _ => bail!("bad time {time:?}"),
    };
    if h > 23 || mi > 59 || se > 60 {
        bail!("time {time:?} out of range");
    }
    let offset = match zone {
        z if ["UTC", "GMT", "UT", "Z"]
            .iter()
            .any(|x| x.eq_ignore_ascii_case(z)) =>
        {
            0
        }
        z if (z.starts_with('+') || z.starts_with('-'))
            && z.len() == 5
            && z.bytes().skip(1).all(|b| b.is_ascii_digit()) =>
        {
            // All ASCII (checked above), so the byte slices below are on char boundaries.
            let hh = num(&z[1..3], "zone hours", 2)?;
            let mm = num(&z[3..5], "zone minutes", 2)?;
            if hh > 23 || mm > 59 {
                bail!("zone {z:?} out of range");
            }
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') {
                -o
            } else {
                o
            }
        }
        z => bail!("unknown time zone {z:?}"),
    };
    Ok(days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + se - offset)
}

/// Format unix seconds like a Release file date: `Sat, 11 Jul 2026 10:16:37 UTC`.
pub fn format_date(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 in DAYS).
    let wd = DAYS[(days + 3).rem_euclid(7) as usize];
    let mon = MONTHS[(m - 1).clamp(0, 11) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::composed::{KeyType, SecretKeyParamsBuilder, SignedSecretKey, SubkeyParamsBuilder};
    use pgp::packet::{SignatureConfig, Subpacket};
    use pgp::ser::Serialize;
    use pgp::types::{Duration, Password, SigningKey};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn release_text(valid_until: Option<&str>) -> String {
        let mut s = String::from(
            "Origin: Debian\nLabel: Debian\nSuite: stable\nCodename: bookworm\n\
             Date: Sat, 11 Jul 2026 10:16:37 UTC\n",
        );
        if let Some(v) = valid_until {
            s.push_str(&format!("Valid-Until: {v}\n"));
        }
        s.push_str(
            "Acquire-By-Hash: yes\nArchitectures: all amd64 arm64\nComponents: main contrib\n\
             Description: Test\nMD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 main/binary-amd64/Packages\n\
             SHA256:\n 6f7b3d8c0c1e2a4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4 1484322 main/binary-amd64/Packages\n \
             AB7B3D8C0C1E2A4B5D6E7F8091A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4    98581 main/binary-amd64/Packages.xz\n",
        );
        s
    }

    fn gen_key(seed: u64, created: u32) -> SignedSecretKey {
        gen_key_of(KeyType::Ed25519Legacy, seed, created)
    }

    fn gen_key_of(key_type: KeyType, seed: u64, created: u32) -> SignedSecretKey {
        let mut rng = StdRng::seed_from_u64(seed);
        SecretKeyParamsBuilder::default()
            .key_type(key_type.clone())
            .can_certify(true)
            .can_sign(true)
            .created_at(Timestamp::from_secs(created))
            .primary_user_id(format!("Test Archive Key {seed} <archive@example.invalid>"))
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(key_type)
                    .can_sign(true)
                    .created_at(Timestamp::from_secs(created))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .generate(&mut rng)
            .unwrap()
    }

    fn public_bytes(keys: &[&SignedSecretKey]) -> Vec<u8> {
        let mut out = Vec::new();
        for k in keys {
            SignedPublicKey::from((*k).clone())
                .to_writer(&mut out)
                .unwrap();
        }
        out
    }

    fn doc_sig(key: &impl SigningKey, text: &str, created: u32, hash: HashAlgorithm) -> Signature {
        let mut rng = StdRng::seed_from_u64(99);
        let mut config = SignatureConfig::from_key(&mut rng, key, SignatureType::Text).unwrap();
        config.hash_alg = hash;
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::from_secs(
                created,
            )))
            .unwrap(),
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())).unwrap(),
        ];
        config.unhashed_subpackets =
            vec![Subpacket::regular(SubpacketData::IssuerKeyId(key.legacy_key_id())).unwrap()];
        config
            .sign(key, &Password::empty(), text.as_bytes())
            .unwrap()
    }

    /// Clear-sign `text` with each of `signers` (primary key or subkey).
    fn clearsign(text: &str, signers: &[&dyn Fn(&str) -> Signature]) -> Vec<u8> {
        let msg = CleartextSignedMessage::new_many(text, |normalized| {
            Ok(signers.iter().map(|f| f(normalized)).collect())
        })
        .unwrap();
        msg.to_armored_bytes(Default::default()).unwrap()
    }

    const KEY_TIME: u32 = 1_700_000_000;
    const SIG_TIME: u32 = 1_783_765_000;
    const NOW: i64 = 1_783_800_000;

    fn opts(now: i64) -> VerifyOptions {
        VerifyOptions {
            now_unix: now,
            allow_unsigned: false,
            allow_expired: false,
        }
    }

    /// The defect: a zone of five bytes holding a multi-byte character was sliced by
    /// bytes inside the character (a panic). Every such zone is an error now.
    #[test]
    fn a_date_zone_with_a_multibyte_character_is_an_error() {
        for zone in [
            "+1\u{e9}2",
            "-\u{e9}12",
            "+12\u{e9}",
            "+\u{20ac}1",
            "\u{e9}\u{e9}+",
        ] {
            assert_eq!(zone.len(), 5, "{zone:?}");
            let d = format!("Sat, 11 Jul 2026 10:16:37 {zone}");
            let e = format!("{:#}", parse_date(&d).unwrap_err());
            assert!(e.contains("time zone"), "{e}");
            let text = format!("Date: {d}\nSHA256:\n {} 1 main/x\n", "0".repeat(64));
            let e = format!("{:#}", parse_release(&text).unwrap_err());
            assert!(e.contains("field Date"), "{e}");
        }
    }

    #[test]
    fn dates_parse_and_format() {
        let t = parse_date("Sat, 11 Jul 2026 10:16:37 UTC").unwrap();
        assert_eq!(format_date(t), "Sat, 11 Jul 2026 10:16:37 UTC");
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 UTC").unwrap(), 0);
        assert_eq!(parse_date("1 Jan 1970 01:00:00 +0100").unwrap(), 0);
        assert_eq!(
            parse_date("Sat, 29 Feb 2020 00:00:00 GMT").unwrap(),
            1_582_934_400
        );
        assert_eq!(
            parse_date("Sun, 18 Jun 2023 00:00:00 Z").unwrap(),
            1_687_046_400
        );
        // Cross-checked with `date -u -d @1783765000`.
        assert_eq!(format_date(1_783_765_000), "Sat, 11 Jul 2026 10:16:40 UTC");
        for bad in [
            "",
            "Sat, 11 Jul 2026",
            "Xyz, 11 Jul 2026 10:16:37 UTC",
            "30 Feb 2023 00:00:00 UTC",
            "11 Foo 2026 10:16:37 UTC",
            "11 Jul 2026 24:00:00 UTC",
            "11 Jul 2026 10:16:37 CEST",
            "11 Jul 26 10:16:37 UTC",
        ] {
            assert!(parse_date(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parses_release_body() {
        let r = parse_release(&release_text(Some("Sat, 18 Jul 2026 10:16:37 UTC"))).unwrap();
        assert_eq!(r.origin.as_deref(), Some("Debian"));
        assert_eq!(r.suite.as_deref(), Some("stable"));
        assert_eq!(r.codename.as_deref(), Some("bookworm"));
        assert_eq!(
            r.date_unix,
            Some(parse_date("Sat, 11 Jul 2026 10:16:37 UTC").unwrap())
        );
        assert_eq!(
            r.valid_until_unix.unwrap() - r.date_unix.unwrap(),
            7 * 86400
        );
        assert_eq!(r.architectures, ["all", "amd64", "arm64"]);
        assert_eq!(r.components, ["main", "contrib"]);
        assert!(r.acquire_by_hash);
        assert_eq!(r.files.len(), 2);
        let xz = &r.files["main/binary-amd64/Packages.xz"];
        assert_eq!(xz.size, 98581);
        assert!(xz.sha256.starts_with("ab7b3d8c"));
        assert_eq!(
            Release::by_hash_path(xz),
            format!("main/binary-amd64/by-hash/SHA256/{}", xz.sha256)
        );
        // Hostile or broken bodies.
        let no_sha = release_text(None).replace("SHA256:", "SHA1:");
        assert!(parse_release(&no_sha).is_err());
        let escape = release_text(None).replace("main/binary-amd64/Packages.xz", "../../etc/x");
        assert!(parse_release(&escape).is_err());
        let two = format!("{}\nOrigin: x\n", release_text(None));
        assert!(parse_release(&two).is_err());
    }

    #[test]
    fn signatures() {
        let k1 = gen_key(1, KEY_TIME);
        let k2 = gen_key(2, KEY_TIME);
        let text = release_text(Some("Sat, 18 Jul 2026 10:16:37 UTC"));
        let ring = Keyring::from_bytes(&public_bytes(&[&k1])).unwrap();
        assert_eq!(ring.len(), 1);

        // Good: signed by the primary key (SHA-256) and by the subkey (SHA-512).
        let by_primary = |t: &str| doc_sig(&k1.primary_key, t, SIG_TIME, HashAlgorithm::Sha256);
        let by_sub = |t: &str| {
            doc_sig(
                &k1.secret_subkeys[0].key,
                t,
                SIG_TIME,
                HashAlgorithm::Sha512,
            )
        };
        let by_other = |t: &str| doc_sig(&k2.primary_key, t, SIG_TIME, HashAlgorithm::Sha256);
        for signers in [
            vec![&by_primary as &dyn Fn(&str) -> Signature],
            vec![&by_sub as &dyn Fn(&str) -> Signature],
            vec![&by_other as &dyn Fn(&str) -> Signature, &by_sub],
        ] {
            let signed = clearsign(&text, &signers);
            let r = verify_inrelease(&signed, &ring, &opts(NOW)).unwrap();
            assert_eq!(r.codename.as_deref(), Some("bookworm"));
            assert_eq!(r.files.len(), 2);
        }
        let signed = clearsign(&text, &[&by_sub]);
        let s = String::from_utf8(signed.clone()).unwrap();

        // Dash-escaped lines are unescaped before parsing (and a line starting
        // with '-' is not a valid field, so parsing names it).
        let dashed = clearsign(
            &format!("{text}-----BEGIN PGP SIGNATURE-----\n"),
            &[&by_sub],
        );
        assert!(String::from_utf8_lossy(&dashed).contains("\n- -----BEGIN PGP SIGNATURE-----\n"));
        let e = format!(
            "{:#}",
            verify_inrelease(&dashed, &ring, &opts(NOW)).unwrap_err()
        );
        assert!(e.contains("got \"-----BEGIN PGP SIGNATURE-----\""), "{e}");

        // A modified body fails.
        let tampered = s.replace("Codename: bookworm", "Codename: bookwurm");
        assert_ne!(tampered, s);
        let e = verify_inrelease(tampered.as_bytes(), &ring, &opts(NOW)).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e:#}");
        let tampered = s.replace("98581", "98582");
        assert!(verify_inrelease(tampered.as_bytes(), &ring, &opts(NOW)).is_err());

        // Text outside the signed part is refused, never parsed.
        let before = format!("Codename: evil\n\n{s}");
        assert!(verify_inrelease(before.as_bytes(), &ring, &opts(NOW)).is_err());
        let after = format!("{s}\nSHA256:\n {} 1 main/evil\n", "0".repeat(64));
        assert!(verify_inrelease(after.as_bytes(), &ring, &opts(NOW)).is_err());

        // Signed only by a key that is not in the keyring.
        let signed = clearsign(&text, &[&by_other]);
        let e = verify_inrelease(&signed, &ring, &opts(NOW))
            .unwrap_err()
            .to_string();
        let other_id = key_id_hex(&k2.primary_key);
        let ring_id = key_id_hex(&k1.primary_key);
        assert!(
            e.contains("does not verify against the keyring")
                && e.contains(&other_id)
                && e.contains(&ring_id),
            "{e}"
        );
        // ... but passes with a keyring holding both keys (binary, concatenated).
        let both = Keyring::from_bytes(&public_bytes(&[&k1, &k2])).unwrap();
        assert_eq!(both.key_ids(), [ring_id.clone(), other_id.clone()]);
        verify_inrelease(&signed, &both, &opts(NOW)).unwrap();

        // Signature made before the key existed.
        let early = |t: &str| doc_sig(&k1.primary_key, t, KEY_TIME - 10, HashAlgorithm::Sha256);
        let signed = clearsign(&text, &[&early]);
        assert!(verify_inrelease(&signed, &ring, &opts(NOW)).is_err());
    }

    /// The reference verifier agrees: gpgv accepts what we sign and accept,
    /// and refuses the tampered text we refuse.
    #[test]
    fn cross_check_with_gpgv() {
        if !crate::testutil::require_tool("gpgv") {
            return;
        }
        let k1 = gen_key(8, KEY_TIME);
        let keyring = public_bytes(&[&k1]);
        let ring = Keyring::from_bytes(&keyring).unwrap();
        let by_sub = |t: &str| {
            doc_sig(
                &k1.secret_subkeys[0].key,
                t,
                SIG_TIME,
                HashAlgorithm::Sha512,
            )
        };
        let by_primary = |t: &str| doc_sig(&k1.primary_key, t, SIG_TIME, HashAlgorithm::Sha256);
        let signed = clearsign(&release_text(None), &[&by_sub, &by_primary]);
        let tampered = String::from_utf8(signed.clone())
            .unwrap()
            .replace("Suite: stable", "Suite: stale");
        let tmp = tempfile::tempdir().unwrap();
        let kr = tmp.path().join("keyring.gpg");
        std::fs::write(&kr, &keyring).unwrap();
        for (data, ok) in [(signed, true), (tampered.into_bytes(), false)] {
            let f = tmp.path().join("InRelease");
            std::fs::write(&f, &data).unwrap();
            let out = std::process::Command::new("gpgv")
                .env("GNUPGHOME", tmp.path())
                .arg("--keyring")
                .arg(&kr)
                .arg(&f)
                .output()
                .unwrap();
            assert_eq!(
                out.status.success(),
                ok,
                "gpgv: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(verify_inrelease(&data, &ring, &opts(NOW)).is_ok(), ok);
        }
    }

    /// RSA keys (what Debian uses), and a SHA-1 signature refused as weak.
    #[test]
    fn rsa_keys_and_weak_hashes() {
        // A throw-away RSA 2048 test key (primary + signing subkey, made by
        // `gen_key_of(KeyType::Rsa(2048), 7, KEY_TIME)`; stored because RSA
        // key generation takes many seconds in debug builds).
        let (k, _) = SignedSecretKey::from_armor_single(
            include_bytes!("../../fixtures/rsa2048-test-key.sec.asc").as_slice(),
        )
        .unwrap();
        let ring = Keyring::from_bytes(&public_bytes(&[&k])).unwrap();
        let text = release_text(None);
        let sha512 =
            |t: &str| doc_sig(&k.secret_subkeys[0].key, t, SIG_TIME, HashAlgorithm::Sha512);
        verify_inrelease(&clearsign(&text, &[&sha512]), &ring, &opts(NOW)).unwrap();
        let sha1 = |t: &str| doc_sig(&k.secret_subkeys[0].key, t, SIG_TIME, HashAlgorithm::Sha1);
        let e = verify_inrelease(&clearsign(&text, &[&sha1]), &ring, &opts(NOW))
            .unwrap_err()
            .to_string();
        assert!(e.contains("weak"), "{e}");
        // One good signature among bad ones is enough.
        verify_inrelease(&clearsign(&text, &[&sha1, &sha512]), &ring, &opts(NOW)).unwrap();
    }

    #[test]
    fn armored_keyring_and_expiry() {
        let k1 = gen_key(3, KEY_TIME);
        let armored = SignedPublicKey::from(k1.clone())
            .to_armored_bytes(Default::default())
            .unwrap();
        let ring = Keyring::from_bytes(&armored).unwrap();
        let by_sub = |t: &str| {
            doc_sig(
                &k1.secret_subkeys[0].key,
                t,
                SIG_TIME,
                HashAlgorithm::Sha256,
            )
        };

        // Valid-Until in the past: refused, accepted with allow_expired.
        let text = release_text(Some("Sun, 12 Jul 2026 10:16:37 UTC"));
        let signed = clearsign(&text, &[&by_sub]);
        let later = parse_date("Mon, 13 Jul 2026 00:00:00 UTC").unwrap();
        let e = verify_inrelease(&signed, &ring, &opts(later))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Release file expired on Sun, 12 Jul 2026 10:16:37 UTC"),
            "{e}"
        );
        let mut o = opts(later);
        o.allow_expired = true;
        verify_inrelease(&signed, &ring, &o).unwrap();
        // Still valid before Valid-Until.
        verify_inrelease(&signed, &ring, &opts(NOW)).unwrap();
        // Dated in the future: refused.
        let e = verify_inrelease(&signed, &ring, &opts(KEY_TIME as i64 + 5)).unwrap_err();
        assert!(
            e.to_string().contains("not valid yet") || e.to_string().contains("does not verify")
        );

        // A signing subkey whose binding says it expired 100 s after creation.
        let mut k_exp = gen_key(4, KEY_TIME);
        let sub_pub = k_exp.secret_subkeys[0].key.public_key();
        let mut cfg = k_exp.secret_subkeys[0].signatures[0]
            .config()
            .unwrap()
            .clone();
        cfg.hashed_subpackets.push(
            Subpacket::regular(SubpacketData::KeyExpirationTime(Duration::from_secs(100))).unwrap(),
        );
        let rebound = cfg
            .sign_subkey_binding(
                &k_exp.primary_key,
                &k_exp.primary_key.public_key(),
                &Password::empty(),
                &sub_pub,
            )
            .unwrap();
        k_exp.secret_subkeys[0].signatures = vec![rebound];
        let ring = Keyring::from_bytes(&public_bytes(&[&k_exp])).unwrap();
        let by_exp_sub = |t: &str| {
            doc_sig(
                &k_exp.secret_subkeys[0].key,
                t,
                SIG_TIME,
                HashAlgorithm::Sha256,
            )
        };
        let signed = clearsign(&release_text(None), &[&by_exp_sub]);
        let e = verify_inrelease(&signed, &ring, &opts(NOW))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        // The primary key of the same certificate is still fine.
        let by_primary = |t: &str| doc_sig(&k_exp.primary_key, t, SIG_TIME, HashAlgorithm::Sha256);
        let signed = clearsign(&release_text(None), &[&by_primary]);
        verify_inrelease(&signed, &ring, &opts(NOW)).unwrap();
    }

    #[test]
    fn unsigned_release() {
        let k1 = gen_key(5, KEY_TIME);
        let ring = Keyring::from_bytes(&public_bytes(&[&k1])).unwrap();
        let text = release_text(None);
        let e = verify_inrelease(text.as_bytes(), &ring, &opts(NOW))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed"), "{e}");
        let mut o = opts(NOW);
        o.allow_unsigned = true;
        let r = verify_inrelease(text.as_bytes(), &ring, &o).unwrap();
        assert_eq!(r.files.len(), 2);
        // allow_unsigned never excuses a bad signature.
        let k2 = gen_key(6, KEY_TIME);
        let by_other = |t: &str| doc_sig(&k2.primary_key, t, SIG_TIME, HashAlgorithm::Sha256);
        let signed = clearsign(&text, &[&by_other]);
        assert!(verify_inrelease(&signed, &ring, &o).is_err());
        // Garbage.
        assert!(verify_inrelease(b"\xff\xfe", &ring, &o).is_err());
        assert!(Keyring::from_bytes(b"").is_err());
        assert!(Keyring::from_bytes(b"not a key").is_err());
    }

    /// Verify a real InRelease named by FUSE_TEST_INRELEASE against the host's
    /// Debian archive keyring, or the keyring named by FUSE_TEST_KEYRING
    /// (manual check of the real archive).
    #[test]
    #[ignore = "manual check of the real archive: set FUSE_TEST_INRELEASE and run with --ignored"]
    fn real_inrelease_from_env() {
        let path = std::env::var("FUSE_TEST_INRELEASE")
            .expect("FUSE_TEST_INRELEASE names an InRelease file to verify");
        let kr = std::env::var("FUSE_TEST_KEYRING")
            .unwrap_or_else(|_| "/usr/share/keyrings/debian-archive-keyring.gpg".into());
        let keyring = std::fs::read(&kr).unwrap_or_else(|e| panic!("keyring {kr}: {e}"));
        let ring = Keyring::from_bytes(&keyring).unwrap();
        let data = std::fs::read(&path).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let r = verify_inrelease(&data, &ring, &opts(now)).unwrap();
        eprintln!(
            "verified {path}: origin {:?} suite {:?} codename {:?} date {:?}, {} SHA256 entries, keyring {:?}",
            r.origin,
            r.suite,
            r.codename,
            r.date,
            r.files.len(),
            ring.key_ids()
        );
        assert!(!r.files.is_empty());
        // Tampering with one byte of the signed text must break it.
        let text = String::from_utf8(data).unwrap();
        let bad = text.replacen("Origin: ", "Origin: X", 1);
        assert!(verify_inrelease(bad.as_bytes(), &ring, &opts(now)).is_err());
    }
}
