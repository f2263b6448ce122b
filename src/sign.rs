//! Secure Boot signing of the UKI: an Authenticode PKCS#7 SignedData (RSA PKCS#1 v1.5,
//! sha256) over the PE's Authenticode digest, built with RustCrypto's `cms`, `x509-cert` and
//! `rsa`; and reading a signature back (signer, fingerprint, verification) for `inspect`.
//!
//! The SignedData (PKCS#7 v1.5 as UEFI firmware and sbverify read it): version 1; one digest
//! algorithm (sha256); content type `SPC_INDIRECT_DATA_OBJID` with the content
//! `SpcIndirectDataContent { SpcAttributeTypeAndOptionalValue { SPC_PE_IMAGE_DATAOBJ,
//! SpcPeImageData }, DigestInfo { sha256, authenticode digest } }`; the signer's certificate;
//! one SignerInfo (issuer and serial, sha256, signed attributes contentType and
//! messageDigest — the digest of the content's DER *value*, without its SEQUENCE header, as
//! Authenticode has it — and rsaEncryption). No signing time: the same key and image give
//! the same bytes (PKCS#1 v1.5 signatures are deterministic).

use crate::format::authenticode;
use anyhow::{bail, ensure, Context, Result};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, DecodePem, Encode};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use std::path::Path;
use x509_cert::attr::Attribute;
use x509_cert::Certificate;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_SPC_INDIRECT_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
const OID_SPC_PE_IMAGE_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_SHA256_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// `SpcPeImageData { flags BIT STRING {}, file [0] EXPLICIT SpcLink { file [2] EXPLICIT
/// SpcString { unicode [0] IMPLICIT BMPString "<<<Obsolete>>>" } } }`, DER, as signing tools
/// write it (firmware ignores its content).
const SPC_PE_IMAGE_DATA: &[u8] = &[
    0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0, b'<', 0, b'<', 0, b'<', 0,
    b'O', 0, b'b', 0, b's', 0, b'o', 0, b'l', 0, b'e', 0, b't', 0, b'e', 0, b'>', 0, b'>', 0, b'>',
];

#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    value: Any,
}

#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
struct DigestInfo {
    digest_algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

fn alg(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: Some(Any::from(der::asn1::Null)),
    }
}

/// Who signed an image, as image.json, inspect and the ledger record it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignerMeta {
    /// The certificate's subject (RFC 4514 text).
    pub subject: String,
    /// sha256 of the certificate's DER, hex.
    pub fingerprint: String,
}

/// A signing key and its certificate, checked to belong together.
pub struct Signer {
    key: RsaPrivateKey,
    cert: Certificate,
    cert_der: Vec<u8>,
}

fn signer_meta(cert: &Certificate, der: &[u8]) -> SignerMeta {
    SignerMeta {
        subject: cert.tbs_certificate.subject.to_string(),
        fingerprint: crate::digest::sha256_hex(der),
    }
}

fn cert_key(cert: &Certificate) -> Result<RsaPublicKey> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("cannot encode the certificate's public key")?;
    RsaPublicKey::from_public_key_der(&spki)
        .context("the certificate's key is not an RSA key (UEFI Secure Boot needs RSA)")
}

/// Largest key or certificate file read (a 16384-bit RSA key in PEM is under 13 KiB; a
/// certificate with a long chain of extensions a few KiB): anything larger is refused
/// before it is read whole.
const MAX_PEM: u64 = 1 << 20;

impl Signer {
    /// Reads an unencrypted PEM private key (PKCS#8 `PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY`) and a PEM (or DER) certificate; fails when they do not match.
    pub fn load(key_path: &Path, cert_path: &Path) -> Result<Signer> {
        let key_bytes = crate::util::fs::read_capped(key_path, MAX_PEM, "signing key")?;
        let key_text = String::from_utf8(key_bytes).map_err(|_| {
            anyhow::anyhow!(
                "the signing key {} is not a PEM text file",
                key_path.display()
            )
        })?;
        let cert_bytes = crate::util::fs::read_capped(cert_path, MAX_PEM, "certificate")?;
        let key =
            parse_key(&key_text).with_context(|| format!("signing key {}", key_path.display()))?;
        let cert = if cert_bytes.starts_with(b"-----") || cert_bytes.contains(&b'-') {
            Certificate::from_pem(&cert_bytes)
        } else {
            Certificate::from_der(&cert_bytes)
        }
        .with_context(|| {
            format!(
                "{} is not an X.509 certificate (PEM or DER)",
                cert_path.display()
            )
        })?;
        Signer::new(key, cert).with_context(|| {
            format!(
                "signing key {} and certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })
    }

    pub fn new(key: RsaPrivateKey, cert: Certificate) -> Result<Signer> {
        let public = cert_key(&cert)?;
        ensure!(
            RsaPublicKey::from(&key) == public,
            "the key does not match the certificate's public key"
        );
        let cert_der = cert.to_der()?;
        Ok(Signer {
            key,
            cert,
            cert_der,
        })
    }

    pub fn meta(&self) -> SignerMeta {
        signer_meta(&self.cert, &self.cert_der)
    }

    /// The PKCS#7 SignedData (DER) for a PE image with Authenticode digest `digest`.
    pub fn pkcs7(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let idc = SpcIndirectDataContent {
            data: SpcAttributeTypeAndOptionalValue {
                value_type: OID_SPC_PE_IMAGE_DATA,
                value: Any::from_der(SPC_PE_IMAGE_DATA)?,
            },
            message_digest: DigestInfo {
                digest_algorithm: alg(OID_SHA256),
                digest: OctetString::new(digest.to_vec())?,
            },
        };
        let content = Any::encode_from(&idc)?;
        let content_digest = Sha256::digest(content.value());
        let attr = |oid, value: Any| -> Result<Attribute> {
            Ok(Attribute {
                oid,
                values: SetOfVec::try_from(vec![value])?,
            })
        };
        let signed_attrs = SetOfVec::try_from(vec![
            attr(OID_CONTENT_TYPE, Any::encode_from(&OID_SPC_INDIRECT_DATA)?)?,
            attr(
                OID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(content_digest.to_vec())?)?,
            )?,
        ])?;
        let to_sign = Sha256::digest(signed_attrs.to_der()?);
        let signature = self
            .key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &to_sign)
            .context("RSA signing failed")?;
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: self.cert.tbs_certificate.issuer.clone(),
                serial_number: self.cert.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: alg(OID_SHA256),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: alg(OID_RSA),
            signature: OctetString::new(signature)?,
            unsigned_attrs: None,
        };
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![alg(OID_SHA256)])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: OID_SPC_INDIRECT_DATA,
                econtent: Some(content),
            },
            certificates: Some(CertificateSet(SetOfVec::try_from(vec![
                CertificateChoices::Certificate(self.cert.clone()),
            ])?)),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
        };
        let ci = ContentInfo {
            content_type: OID_SIGNED_DATA,
            content: Any::encode_from(&sd)?,
        };
        Ok(ci.to_der()?)
    }

    /// The image with an Authenticode signature in its certificate table.
    pub fn sign_pe(&self, image: &[u8]) -> Result<Vec<u8>> {
        let digest = authenticode::digest(image).context("cannot hash the PE image")?;
        authenticode::embed(image, &self.pkcs7(&digest)?)
    }
}

fn parse_key(text: &str) -> Result<RsaPrivateKey> {
    if text.contains("ENCRYPTED") {
        bail!(
            "the key is encrypted; fuse reads unencrypted keys only. Decrypt a copy, e.g. \
             `openssl pkey -in KEY -passin pass:... -out plain.pem` (keep it out of version control)"
        );
    }
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return RsaPrivateKey::from_pkcs1_pem(text).context("not a PKCS#1 RSA private key");
    }
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        return RsaPrivateKey::from_pkcs8_pem(text)
            .context("not a PKCS#8 RSA private key (only RSA keys sign for UEFI Secure Boot)");
    }
    bail!("no PEM `PRIVATE KEY` or `RSA PRIVATE KEY` block")
}

/// What the certificate table of an image says, and whether it holds.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SignatureReport {
    pub signer: SignerMeta,
    /// Problems found verifying the signature against the embedded certificate and the
    /// image's Authenticode digest (empty: verified).
    pub problems: Vec<String>,
}

/// Reads and verifies the signatures of a PE image against their embedded certificates.
/// Empty when the image is unsigned; an error when the table cannot be parsed at all.
pub fn verify_pe(image: &[u8]) -> Result<Vec<SignatureReport>> {
    let digest = authenticode::digest(image)?;
    authenticode::signatures(image)?
        .iter()
        .map(|p7| verify_pkcs7(p7, &digest))
        .collect()
}

fn verify_pkcs7(p7: &[u8], digest: &[u8; 32]) -> Result<SignatureReport> {
    let ci = ContentInfo::from_der(p7).context("the signature is not a PKCS#7 ContentInfo")?;
    ensure!(
        ci.content_type == OID_SIGNED_DATA,
        "the signature is not PKCS#7 SignedData"
    );
    let sd: SignedData = ci.content.decode_as().context("malformed SignedData")?;
    let cert = sd
        .certificates
        .as_ref()
        .and_then(|c| {
            c.0.iter().find_map(|c| match c {
                CertificateChoices::Certificate(c) => Some(c.clone()),
                _ => None,
            })
        })
        .context("the signature carries no certificate")?;
    let cert_der = cert.to_der()?;
    let mut problems = Vec::new();
    let si = sd
        .signer_infos
        .0
        .iter()
        .next()
        .context("the signature has no SignerInfo")?;
    if let SignerIdentifier::IssuerAndSerialNumber(ias) = &si.sid {
        if ias.issuer != cert.tbs_certificate.issuer
            || ias.serial_number != cert.tbs_certificate.serial_number
        {
            problems.push("the signer is not the embedded certificate".into());
        }
    }
    if sd.encap_content_info.econtent_type != OID_SPC_INDIRECT_DATA {
        problems.push("the content is not SpcIndirectDataContent".into());
    }
    let content = sd
        .encap_content_info
        .econtent
        .as_ref()
        .context("the signature has no content")?;
    match content.decode_as::<SpcIndirectDataContent>() {
        Ok(idc) if idc.message_digest.digest.as_bytes() == digest => {}
        Ok(idc) => problems.push(format!(
            "the signed Authenticode digest {} is not the image's {}",
            crate::digest::hex(idc.message_digest.digest.as_bytes()),
            crate::digest::hex(digest)
        )),
        Err(e) => problems.push(format!("malformed SpcIndirectDataContent: {e}")),
    }
    if si.digest_alg.oid != OID_SHA256 {
        problems.push(format!(
            "digest algorithm {} is not sha256",
            si.digest_alg.oid
        ));
    }
    let signed_attrs = si
        .signed_attrs
        .as_ref()
        .context("the SignerInfo has no signed attributes")?;
    let md = signed_attrs
        .iter()
        .find(|a| a.oid == OID_MESSAGE_DIGEST)
        .and_then(|a| a.values.iter().next())
        .and_then(|v| v.decode_as::<OctetString>().ok());
    if md.as_ref().map(|m| m.as_bytes()) != Some(Sha256::digest(content.value()).as_slice()) {
        problems.push("the messageDigest attribute does not match the content".into());
    }
    if ![OID_RSA, OID_SHA256_RSA].contains(&si.signature_algorithm.oid) {
        problems.push(format!(
            "signature algorithm {} is not RSA",
            si.signature_algorithm.oid
        ));
    }
    match cert_key(&cert) {
        Ok(k) => {
            let hashed = Sha256::digest(signed_attrs.to_der()?);
            if k.verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &hashed,
                si.signature.as_bytes(),
            )
            .is_err()
            {
                problems
                    .push("the RSA signature does not verify with the embedded certificate".into());
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    Ok(SignatureReport {
        signer: signer_meta(&cert, &cert_der),
        problems,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A throwaway key and self-signed certificate made with openssl, when installed.
    pub(crate) fn openssl_pair(
        dir: &Path,
        name: &str,
        rsa_args: &[&str],
    ) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .ok()?
            .status
            .success();
        if !ok {
            return None;
        }
        if !rsa_args.is_empty() {
            let out = std::process::Command::new("openssl")
                .args(rsa_args)
                .arg("-in")
                .arg(&key)
                .output()
                .ok()?;
            std::fs::write(&key, out.stdout).ok()?;
        }
        Some((key, cert))
    }

    fn need_openssl() -> bool {
        crate::testutil::require_tool("openssl")
    }

    #[test]
    fn signs_verifies_and_rejects_tampering_and_mismatched_keys() {
        if !need_openssl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (k1, c1) = openssl_pair(dir.path(), "one", &[]).unwrap();
        // the same kind of key in PKCS#1 form
        let (k2, c2) = openssl_pair(dir.path(), "two", &["rsa", "-traditional"]).unwrap();
        assert!(std::fs::read_to_string(&k2)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        let s1 = Signer::load(&k1, &c1).unwrap();
        let s2 = Signer::load(&k2, &c2).unwrap();
        let e = format!("{:#}", Signer::load(&k1, &c2).err().unwrap());
        assert!(e.contains("does not match"), "{e}");

        let pe = crate::format::authenticode::tests::tiny_pe();
        let signed = s1.sign_pe(&pe).unwrap();
        assert_eq!(signed, s1.sign_pe(&pe).unwrap(), "deterministic");
        let r = verify_pe(&signed).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].problems.is_empty(), "{:?}", r[0].problems);
        assert_eq!(r[0].signer.subject, "CN=one");
        assert_eq!(r[0].signer, s1.meta());
        assert!(verify_pe(&pe).unwrap().is_empty());

        let mut tampered = signed.clone();
        tampered[0x300] ^= 1;
        let r = verify_pe(&tampered).unwrap();
        assert!(
            r[0].problems
                .iter()
                .any(|p| p.contains("Authenticode digest")),
            "{r:?}"
        );
        assert_ne!(s2.sign_pe(&pe).unwrap(), signed);

        // openssl reads the SignedData and checks its signature over the content value.
        let p7 = dir.path().join("sig.der");
        std::fs::write(
            &p7,
            &crate::format::authenticode::signatures(&signed).unwrap()[0],
        )
        .unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
            .arg(&p7)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn endless_or_huge_key_and_cert_files_fail_fast() {
        // /dev/zero as either file: refused after at most MAX_PEM + 1 bytes (unbounded
        // reading grew to 16 GB before this cap).
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.pem");
        std::fs::write(&small, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let zero = Path::new("/dev/zero");
        let t = std::time::Instant::now();
        let e = format!("{:#}", Signer::load(zero, &small).err().unwrap());
        assert!(
            e.contains("signing key /dev/zero") && e.contains("larger"),
            "{e}"
        );
        let e = format!("{:#}", Signer::load(&small, zero).err().unwrap());
        assert!(
            e.contains("certificate /dev/zero") && e.contains("larger"),
            "{e}"
        );
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_PEM + 1) as usize]).unwrap();
        let e = format!("{:#}", Signer::load(&small, &big).err().unwrap());
        assert!(e.contains("certificate") && e.contains("larger"), "{e}");
        let e = format!("{:#}", Signer::load(&big, &small).err().unwrap());
        assert!(e.contains("larger"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3));
    }

    #[test]
    fn encrypted_and_non_pem_keys_are_refused_with_a_hint() {
        let e = format!(
            "{:#}",
            parse_key("-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap_err()
        );
        assert!(e.contains("openssl pkey"), "{e}");
        assert!(parse_key("hello").is_err());
    }
}
