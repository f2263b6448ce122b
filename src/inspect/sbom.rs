//! SBOMs of an image: SPDX 2.3 JSON and CycloneDX 1.5 JSON, from its verified image.json
//! and the file systems of its layers read back from the partitions. Deterministic: no
//! clock (the creation time is the image's source epoch), no random ids (namespaces and
//! serial numbers derive from the image digest), every list sorted; fixed field order
//! (serde structs, not maps).

use crate::digest::sha256_hex;
use crate::disk::{ContainerPackage, ContainerPackages, ImageMeta, LayerMeta};
use crate::layers::PackageRef;
use crate::tree::{Kind, Tree};
use serde::Serialize;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};

/// A layer's metadata and its file system as read back from its partition.
pub struct LayerContent<'a> {
    pub meta: &'a LayerMeta,
    pub tree: &'a Tree,
}

fn sha1_hex(data: &[u8]) -> String {
    crate::digest::hex(&Sha1::digest(data))
}

fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// `2024-02-10T12:00:00Z`
pub fn timestamp(epoch: u64) -> String {
    let (y, m, d, hh, mm, ss) = super::render::civil(epoch);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

fn distro_qualifier(distribution: &str) -> (String, String) {
    // "debian/bookworm" -> ("debian", "debian-12")
    let (vendor, codename) = distribution
        .split_once('/')
        .unwrap_or(("debian", distribution));
    let version = match codename {
        "buster" => "10",
        "bullseye" => "11",
        "bookworm" => "12",
        "trixie" => "13",
        "forky" => "14",
        other => other,
    };
    (vendor.to_string(), format!("{vendor}-{version}"))
}

/// Percent-encode everything but the unreserved characters (as package URLs require).
fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The package URL of a package a container's database lists:
/// `pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12`,
/// `pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=alpine-3.19.1`.
pub fn container_purl(db: &ContainerPackages, p: &ContainerPackage) -> String {
    let mut q = Vec::new();
    if !p.arch.is_empty() {
        q.push(format!("arch={}", pct(&p.arch)));
    }
    if let Some(d) = &db.distro {
        q.push(format!("distro={}", pct(d)));
    }
    format!(
        "pkg:{}/{}/{}@{}{}{}",
        pct(&db.kind),
        pct(&db.vendor),
        pct(&p.name),
        pct(&p.version),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    )
}

/// The container's package databases, if the app is a container.
fn container_dbs(m: &ImageMeta) -> &[ContainerPackages] {
    m.app.container.as_ref().map_or(&[], |c| &c.packages)
}

fn container_package_id(db: &ContainerPackages, p: &ContainerPackage) -> String {
    format!(
        "SPDXRef-Package-{}-{}-{}",
        id_part(&db.kind),
        id_part(&p.name),
        &sha256_hex(container_purl(db, p).as_bytes())[..12]
    )
}

/// The package URL of a Debian package: `pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12`.
pub fn purl(p: &PackageRef, distribution: &str) -> String {
    let (vendor, distro) = distro_qualifier(distribution);
    format!(
        "pkg:deb/{}/{}@{}?arch={}&distro={}",
        pct(&vendor),
        pct(&p.name),
        pct(&p.version),
        pct(&p.arch),
        pct(&distro)
    )
}

// ---------------------------------------------------------------------------------------
// Licences: Debian (DEP-5) short names to SPDX expressions.

const DEBIAN_TO_SPDX: &[(&str, &str)] = &[
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("Apache-2.0", "Apache-2.0"),
    ("Apache-2", "Apache-2.0"),
    ("Expat", "MIT"),
    ("MIT", "MIT"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("ISC", "ISC"),
    ("Zlib", "Zlib"),
    ("CC0-1.0", "CC0-1.0"),
    ("CC0", "CC0-1.0"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("PSF-2", "PSF-2.0"),
    ("OpenSSL", "OpenSSL"),
    ("curl", "curl"),
    ("X11", "X11"),
    ("FTL", "FTL"),
    ("IJG", "IJG"),
    ("libpng", "Libpng"),
    ("OFL-1.1", "OFL-1.1"),
    ("Unlicense", "Unlicense"),
    ("WTFPL", "WTFPL"),
    ("EPL-1.0", "EPL-1.0"),
    ("EPL-2.0", "EPL-2.0"),
    ("CDDL-1.0", "CDDL-1.0"),
];

const EXCEPTIONS: &[(&str, &str)] = &[
    ("Linux-syscall-note", "Linux-syscall-note"),
    ("OpenSSL", "OpenSSL-exception"),
    ("Classpath", "Classpath-exception-2.0"),
    ("Classpath-exception-2.0", "Classpath-exception-2.0"),
    ("GCC-exception-3.1", "GCC-exception-3.1"),
    ("GCC-exception", "GCC-exception-3.1"),
    ("Autoconf-exception-3.0", "Autoconf-exception-3.0"),
    ("Bison-exception-2.2", "Bison-exception-2.2"),
    ("LLVM-exception", "LLVM-exception"),
    ("Font-exception-2.0", "Font-exception-2.0"),
];

fn lookup(table: &[(&str, &'static str)], name: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(d, s)| d.eq_ignore_ascii_case(name) || s.eq_ignore_ascii_case(name))
        .map(|(_, s)| *s)
}

/// `LicenseRef-` id for a name that is not on the SPDX list.
fn license_ref(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            '+' => '+',
            _ => '-',
        })
        .collect::<String>()
        .replace('+', "-plus");
    format!("LicenseRef-{id}")
}

/// An SPDX licence expression for a Debian (DEP-5) licence expression, with the
/// `LicenseRef-`s it uses (name -> id). `None` when the expression is malformed.
pub fn spdx_license(dep5: &str) -> Option<(String, BTreeMap<String, String>)> {
    let spaced = dep5
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace(',', " ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut refs = BTreeMap::new();
    let mut depth = 0i32;
    let mut want_operand = true;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        match w.to_ascii_lowercase().as_str() {
            "(" if want_operand => {
                depth += 1;
                out.push("(".into());
            }
            ")" if !want_operand => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
                out.push(")".into());
            }
            "and" | "or" if !want_operand => {
                out.push(w.to_ascii_uppercase());
                want_operand = true;
            }
            "with" if !want_operand => {
                // "X with Y exception": Y up to the word "exception" (or the end / a parenthesis)
                let mut name = Vec::new();
                i += 1;
                while i < words.len() && !matches!(words[i], "(" | ")") {
                    if words[i].eq_ignore_ascii_case("exception") {
                        break;
                    }
                    name.push(words[i]);
                    i += 1;
                }
                let name = name.join("-");
                let last = out.pop()?;
                match lookup(EXCEPTIONS, &name) {
                    Some(e) if !last.starts_with("LicenseRef-") => {
                        out.push(format!("{last} WITH {e}"))
                    }
                    _ => {
                        // Unknown exception: the whole pair is one licence not on the list.
                        let original = format!("{last} with {name} exception");
                        let r = license_ref(&format!("{last}-with-{name}-exception"));
                        refs.insert(original, r.clone());
                        out.push(r);
                    }
                }
                if i < words.len() && words[i].eq_ignore_ascii_case("exception") {
                    i += 1;
                }
                continue;
            }
            "(" | ")" | "and" | "or" | "with" => return None,
            _ if want_operand => {
                match lookup(DEBIAN_TO_SPDX, w) {
                    Some(s) => out.push(s.into()),
                    None => {
                        let r = license_ref(w);
                        refs.insert(w.to_string(), r.clone());
                        out.push(r);
                    }
                }
                want_operand = false;
            }
            _ => return None,
        }
        i += 1;
    }
    if depth != 0 || want_operand {
        return None;
    }
    let expr = out.join(" ").replace("( ", "(").replace(" )", ")");
    Some((expr, refs))
}

// ---------------------------------------------------------------------------------------
// SPDX 2.3

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxDocument {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdxid: &'static str,
    name: String,
    document_namespace: String,
    comment: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage>,
    files: Vec<SpdxFile>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicence>,
}

#[derive(Serialize)]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdxid: String,
    name: String,
    version_info: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supplier: Option<String>,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_verification_code: Option<VerificationCode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    license_concluded: &'static str,
    license_declared: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_comments: Option<String>,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerificationCode {
    package_verification_code_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxFile {
    #[serde(rename = "SPDXID")]
    spdxid: String,
    file_name: String,
    checksums: Vec<Checksum>,
    license_concluded: &'static str,
    copyright_text: &'static str,
    comment: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicence {
    license_id: String,
    name: String,
    extracted_text: String,
}

/// A string usable in an SPDXID (`[A-Za-z0-9.-]`).
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn package_id(p: &PackageRef) -> String {
    format!(
        "SPDXRef-Package-deb-{}-{}",
        id_part(&p.name),
        p.sha256.get(..12).unwrap_or(&p.sha256)
    )
}

/// The regular files of a tree, sorted by path: (path, contents).
fn regular_files(tree: &Tree) -> Vec<(String, &[u8], u32, u32, u32)> {
    tree.iter()
        .filter_map(|(p, n)| match &n.kind {
            Kind::File(d) => Some((format!("/{p}"), d.as_slice(), n.mode, n.uid, n.gid)),
            _ => None,
        })
        .collect()
}

/// The document namespace of an image's SPDX document.
pub fn spdx_namespace(m: &ImageMeta) -> String {
    format!(
        "urn:fuse:spdx:{}-{}:sha256:{}",
        pct(&m.name),
        pct(&m.version),
        digest_hex(m.digest.as_deref().unwrap_or(""))
    )
}

/// The SPDX 2.3 document of an image. `m` is the verified image.json (with `digest`);
/// `layers` the file systems read back from the layer partitions, in image.json order.
pub fn spdx(m: &ImageMeta, layers: &[LayerContent]) -> serde_json::Value {
    let digest = m.digest.clone().unwrap_or_default();
    let mut packages = Vec::new();
    let mut files = Vec::new();
    let mut rels = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: "SPDXRef-Image".into(),
    }];
    let mut extracted: BTreeMap<String, String> = BTreeMap::new(); // id -> name

    packages.push(SpdxPackage {
        spdxid: "SPDXRef-Image".into(),
        name: m.name.clone(),
        version_info: m.version.clone(),
        package_file_name: Some(format!("{}-{}.img", m.name, m.version)),
        supplier: None,
        download_location: "NOASSERTION",
        files_analyzed: false,
        package_verification_code: None,
        has_files: Vec::new(),
        checksums: vec![Checksum {
            algorithm: "SHA256",
            checksum_value: digest_hex(&digest).into(),
        }],
        source_info: Some(format!(
            "built by fuse {} for {} from {} (archive {}), manifest sha256 {}, app sha256 {}{}",
            m.inputs.fuse_version,
            m.arch,
            m.inputs.distribution,
            m.inputs.archive_date.as_deref().unwrap_or("date unknown"),
            m.inputs.manifest_sha256,
            m.inputs.app_sha256,
            m.inputs
                .lock_sha256
                .as_ref()
                .map(|l| format!(", lock sha256 {l}"))
                .unwrap_or_default()
        )),
        license_concluded: "NOASSERTION",
        license_declared: "NOASSERTION".into(),
        license_comments: None,
        copyright_text: "NOASSERTION",
        primary_package_purpose: Some("CONTAINER"),
        external_refs: Vec::new(),
        comment: Some(format!(
            "fuse image: a raw GPT disk ({} bytes) whose sha256 is its identity; an ESP with the UKI, then one read-only file system per layer",
            m.disk_size.unwrap_or(0)
        )),
    });

    // Debian packages, once each, with who contains them.
    let mut debs: BTreeMap<String, (PackageRef, BTreeSet<String>)> = BTreeMap::new();
    let mut add_deb = |p: &PackageRef, container: String| {
        debs.entry(package_id(p))
            .or_insert_with(|| (p.clone(), BTreeSet::new()))
            .1
            .insert(container);
    };
    let (kernel, stub) = (&m.kernel.package, &m.boot.stub);
    add_deb(kernel, "SPDXRef-Image".into());
    add_deb(stub, "SPDXRef-Image".into());
    for l in &m.layers {
        for p in &l.packages {
            add_deb(p, format!("SPDXRef-Layer-{}", id_part(&l.name)));
        }
    }

    for l in layers {
        let lid = format!("SPDXRef-Layer-{}", id_part(&l.meta.name));
        rels.push(Relationship {
            spdx_element_id: "SPDXRef-Image".into(),
            relationship_type: "CONTAINS",
            related_spdx_element: lid.clone(),
        });
        let mut has_files = Vec::new();
        let mut sha1s = Vec::new();
        for (path, data, mode, uid, gid) in regular_files(l.tree) {
            let sha1 = sha1_hex(data);
            let fid = format!(
                "SPDXRef-File-{}-{}",
                id_part(&l.meta.name),
                &sha256_hex(path.as_bytes())[..16]
            );
            has_files.push(fid.clone());
            sha1s.push(sha1.clone());
            files.push(SpdxFile {
                spdxid: fid,
                file_name: format!(".{path}"),
                checksums: vec![
                    Checksum {
                        algorithm: "SHA1",
                        checksum_value: sha1,
                    },
                    Checksum {
                        algorithm: "SHA256",
                        checksum_value: sha256_hex(data),
                    },
                ],
                license_concluded: "NOASSERTION",
                copyright_text: "NOASSERTION",
                comment: format!(
                    "layer {}, mode {:04o}, uid {uid}, gid {gid}, {} bytes",
                    l.meta.name,
                    mode & 0o7777,
                    data.len()
                ),
            });
        }
        sha1s.sort();
        let code = sha1_hex(sha1s.concat().as_bytes());
        packages.push(SpdxPackage {
            spdxid: lid,
            name: format!("{} layer {}", m.name, l.meta.name),
            version_info: m.version.clone(),
            package_file_name: None,
            supplier: None,
            download_location: "NOASSERTION",
            files_analyzed: true,
            package_verification_code: Some(VerificationCode {
                package_verification_code_value: code,
            }),
            has_files,
            checksums: vec![Checksum {
                algorithm: "SHA256",
                checksum_value: digest_hex(&l.meta.digest).into(),
            }],
            source_info: None,
            license_concluded: "NOASSERTION",
            license_declared: "NOASSERTION".into(),
            license_comments: None,
            copyright_text: "NOASSERTION",
            primary_package_purpose: Some("ARCHIVE"),
            external_refs: Vec::new(),
            comment: Some(format!(
                "{} file system ({} bytes) in GPT partition {}; files lists its regular files",
                l.meta.fs, l.meta.size, l.meta.partition
            )),
        });
    }

    for (id, (p, containers)) in &debs {
        let (declared, comments) = match p.license.as_deref().map(|l| (l, spdx_license(l))) {
            Some((orig, Some((expr, refs)))) => {
                for (name, rid) in refs {
                    extracted.entry(rid).or_insert(name);
                }
                (
                    expr,
                    Some(format!("as the Debian copyright file states it: {orig}")),
                )
            }
            Some((orig, None)) => (
                "NOASSERTION".to_string(),
                Some(format!("the Debian copyright file states: {orig}")),
            ),
            None => ("NOASSERTION".to_string(), None),
        };
        let upstream = p
            .version
            .split_once(':')
            .map_or(p.version.as_str(), |(_, v)| v);
        packages.push(SpdxPackage {
            spdxid: id.clone(),
            name: p.name.clone(),
            version_info: p.version.clone(),
            package_file_name: Some(format!("{}_{}_{}.deb", p.name, upstream, p.arch)),
            supplier: Some(format!(
                "Organization: {}",
                distro_qualifier(&m.inputs.distribution).0
            )),
            download_location: "NOASSERTION",
            files_analyzed: false,
            package_verification_code: None,
            has_files: Vec::new(),
            checksums: vec![Checksum {
                algorithm: "SHA256",
                checksum_value: p.sha256.clone(),
            }],
            source_info: p
                .source
                .as_ref()
                .map(|s| format!("built from the Debian source package {s}")),
            license_concluded: "NOASSERTION",
            license_declared: declared,
            license_comments: comments,
            copyright_text: "NOASSERTION",
            primary_package_purpose: (p == kernel).then_some("OPERATING_SYSTEM"),
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER",
                reference_type: "purl",
                reference_locator: purl(p, &m.inputs.distribution),
            }],
            comment: None,
        });
        for c in containers {
            rels.push(Relationship {
                spdx_element_id: c.clone(),
                relationship_type: "CONTAINS",
                related_spdx_element: id.clone(),
            });
        }
    }

    // The container's own packages (its dpkg or apk database), in the layer holding it.
    let reference = m
        .app
        .container
        .as_ref()
        .map(|c| format!("{} ({})", c.reference, c.manifest_digest))
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for db in container_dbs(m) {
        for p in &db.installed {
            let id = container_package_id(db, p);
            if !seen.insert(id.clone()) {
                continue;
            }
            packages.push(SpdxPackage {
                spdxid: id.clone(),
                name: p.name.clone(),
                version_info: p.version.clone(),
                package_file_name: None,
                supplier: Some(format!("Organization: {}", db.vendor)),
                download_location: "NOASSERTION",
                files_analyzed: false,
                package_verification_code: None,
                has_files: Vec::new(),
                checksums: Vec::new(),
                source_info: p
                    .source
                    .as_ref()
                    .map(|s| format!("built from the {} source package {s}", db.vendor)),
                license_concluded: "NOASSERTION",
                license_declared: "NOASSERTION".into(),
                license_comments: p
                    .license
                    .as_ref()
                    .map(|l| format!("the {} database states: {l}", db.kind)),
                copyright_text: "NOASSERTION",
                primary_package_purpose: None,
                external_refs: vec![ExternalRef {
                    reference_category: "PACKAGE-MANAGER",
                    reference_type: "purl",
                    reference_locator: container_purl(db, p),
                }],
                comment: Some(format!(
                    "installed in the container image {reference}, as its {} says",
                    db.path
                )),
            });
            rels.push(Relationship {
                spdx_element_id: format!("SPDXRef-Layer-{}", id_part(&db.layer)),
                relationship_type: "CONTAINS",
                related_spdx_element: id,
            });
        }
    }

    let doc = SpdxDocument {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdxid: "SPDXRef-DOCUMENT",
        name: format!("{}-{}", m.name, m.version),
        document_namespace: spdx_namespace(m),
        comment: format!("The fuse image {digest}"),
        creation_info: CreationInfo {
            created: timestamp(m.inputs.source_epoch),
            creators: vec![format!("Tool: fuse-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages,
        files,
        relationships: rels,
        has_extracted_licensing_infos: extracted
            .into_iter()
            .map(|(id, name)| ExtractedLicence {
                extracted_text: format!(
                    "The licence named \"{name}\" in the Debian machine-readable copyright file (/usr/share/doc/<package>/copyright) of the packages that declare it; its full text is there."
                ),
                license_id: id,
                name,
            })
            .collect(),
    };
    serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
}

// ---------------------------------------------------------------------------------------
// CycloneDX 1.5

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bom {
    bom_format: &'static str,
    spec_version: &'static str,
    serial_number: String,
    version: u32,
    metadata: BomMetadata,
    components: Vec<Component>,
    dependencies: Vec<Dependency>,
}

#[derive(Serialize)]
struct BomMetadata {
    timestamp: String,
    tools: Tools,
    component: Component,
}

#[derive(Serialize)]
struct Tools {
    components: Vec<Component>,
}

#[derive(Serialize, Default)]
struct Component {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref", skip_serializing_if = "Option::is_none")]
    bom_ref: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<Hash>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    licenses: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    components: Vec<Component>,
}

#[derive(Serialize)]
struct Hash {
    alg: &'static str,
    content: String,
}

#[derive(Serialize)]
struct Property {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    #[serde(rename = "ref")]
    reference: String,
    depends_on: Vec<String>,
}

/// An RFC 4122 version-5 UUID (SHA-1, URL namespace) of `name`.
pub fn uuid_v5(name: &str) -> String {
    const URL_NS: [u8; 16] = [
        0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30,
        0xc8,
    ];
    let mut h = Sha1::new();
    h.update(URL_NS);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = crate::digest::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

fn deb_component(p: &PackageRef, distribution: &str, kind: &'static str) -> Component {
    let licenses = match p.license.as_deref() {
        None => Vec::new(),
        Some(l) => match spdx_license(l) {
            Some((expr, refs)) if refs.is_empty() => {
                vec![serde_json::json!({ "expression": expr })]
            }
            _ => vec![serde_json::json!({ "license": { "name": l } })],
        },
    };
    let purl = purl(p, distribution);
    Component {
        kind,
        bom_ref: Some(purl.clone()),
        name: p.name.clone(),
        version: Some(p.version.clone()),
        hashes: vec![Hash {
            alg: "SHA-256",
            content: p.sha256.clone(),
        }],
        licenses,
        purl: Some(purl),
        properties: p
            .source
            .iter()
            .map(|s| Property {
                name: "fuse:deb:source",
                value: s.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The CycloneDX 1.5 BOM of an image (see [`spdx`] for the arguments).
pub fn cyclonedx(m: &ImageMeta, layers: &[LayerContent]) -> serde_json::Value {
    let digest = m.digest.clone().unwrap_or_default();
    let image_ref = format!("fuse-image:{digest}");
    let mut components = vec![
        deb_component(
            &m.kernel.package,
            &m.inputs.distribution,
            "operating-system",
        ),
        deb_component(&m.boot.stub, &m.inputs.distribution, "library"),
    ];
    for l in layers {
        let mut nested: Vec<Component> = l
            .meta
            .packages
            .iter()
            .map(|p| deb_component(p, &m.inputs.distribution, "library"))
            .collect();
        for db in container_dbs(m).iter().filter(|d| d.layer == l.meta.name) {
            for p in &db.installed {
                let purl = container_purl(db, p);
                nested.push(Component {
                    kind: "library",
                    bom_ref: Some(purl.clone()),
                    name: p.name.clone(),
                    version: Some(p.version.clone()),
                    licenses: p
                        .license
                        .iter()
                        .map(|l| serde_json::json!({ "license": { "name": l } }))
                        .collect(),
                    purl: Some(purl),
                    properties: p
                        .source
                        .iter()
                        .map(|s| Property {
                            name: "fuse:container:source",
                            value: s.clone(),
                        })
                        .chain(std::iter::once(Property {
                            name: "fuse:container:database",
                            value: db.path.clone(),
                        }))
                        .collect(),
                    ..Default::default()
                });
            }
        }
        nested.sort_by(|a, b| a.bom_ref.cmp(&b.bom_ref));
        nested.dedup_by(|a, b| a.bom_ref == b.bom_ref);
        for (path, data, mode, uid, gid) in regular_files(l.tree) {
            nested.push(Component {
                kind: "file",
                bom_ref: Some(format!("layer:{}:{path}", l.meta.name)),
                name: path,
                hashes: vec![
                    Hash {
                        alg: "SHA-1",
                        content: sha1_hex(data),
                    },
                    Hash {
                        alg: "SHA-256",
                        content: sha256_hex(data),
                    },
                ],
                properties: vec![
                    Property {
                        name: "fuse:file:mode",
                        value: format!("{:04o}", mode & 0o7777),
                    },
                    Property {
                        name: "fuse:file:owner",
                        value: format!("{uid}:{gid}"),
                    },
                    Property {
                        name: "fuse:file:size",
                        value: data.len().to_string(),
                    },
                ],
                ..Default::default()
            });
        }
        components.push(Component {
            kind: "file",
            bom_ref: Some(format!("layer:{}", l.meta.name)),
            name: format!("layer {}", l.meta.name),
            description: Some(format!(
                "{} file system in GPT partition {}",
                l.meta.fs, l.meta.partition
            )),
            hashes: vec![Hash {
                alg: "SHA-256",
                content: digest_hex(&l.meta.digest).into(),
            }],
            properties: vec![
                Property {
                    name: "fuse:layer:partition",
                    value: l.meta.partition.clone(),
                },
                Property {
                    name: "fuse:layer:size",
                    value: l.meta.size.to_string(),
                },
            ],
            components: nested,
            ..Default::default()
        });
    }
    let depends_on = components
        .iter()
        .filter_map(|c| c.bom_ref.clone())
        .collect();
    let bom = Bom {
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: format!("urn:uuid:{}", uuid_v5(&spdx_namespace(m))),
        version: 1,
        metadata: BomMetadata {
            timestamp: timestamp(m.inputs.source_epoch),
            tools: Tools {
                components: vec![Component {
                    kind: "application",
                    name: "fuse".into(),
                    version: Some(env!("CARGO_PKG_VERSION").into()),
                    ..Default::default()
                }],
            },
            component: Component {
                kind: "container",
                bom_ref: Some(image_ref.clone()),
                name: m.name.clone(),
                version: Some(m.version.clone()),
                description: Some("fuse image: a raw GPT disk whose sha256 is its identity".into()),
                hashes: vec![Hash {
                    alg: "SHA-256",
                    content: digest_hex(&digest).into(),
                }],
                properties: vec![
                    Property {
                        name: "fuse:image:digest",
                        value: digest.clone(),
                    },
                    Property {
                        name: "fuse:image:arch",
                        value: m.arch.name().into(),
                    },
                    Property {
                        name: "fuse:kernel:cmdline",
                        value: m.kernel.cmdline.clone(),
                    },
                ],
                ..Default::default()
            },
        },
        components,
        dependencies: vec![Dependency {
            reference: image_ref,
            depends_on,
        }],
    };
    serde_json::to_value(bom).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_licences_become_spdx_expressions() {
        let (e, r) = spdx_license("(LGPL-2.1+ or MIT) and GPL-2").unwrap();
        assert_eq!(e, "(LGPL-2.1-or-later OR MIT) AND GPL-2.0-only");
        assert!(r.is_empty());
        let (e, r) = spdx_license("GPL-2 with Linux-syscall-note exception").unwrap();
        assert_eq!(e, "GPL-2.0-only WITH Linux-syscall-note");
        assert!(r.is_empty());
        let (e, r) = spdx_license("Expat and public-domain and GPL-2+-or-X11").unwrap();
        assert_eq!(
            e,
            "MIT AND LicenseRef-public-domain AND LicenseRef-GPL-2-plus-or-X11"
        );
        assert_eq!(r.len(), 2);
        let (e, _) = spdx_license("GPL-2+ with Foo exception").unwrap();
        assert_eq!(e, "LicenseRef-GPL-2.0-or-later-with-Foo-exception");
        for bad in ["", "and GPL-2", "GPL-2 or", "(MIT", "MIT)", "MIT GPL-2"] {
            assert_eq!(spdx_license(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn package_urls_encode_versions() {
        let p = PackageRef {
            name: "libc6".into(),
            version: "1:2.36-9+deb12u4".into(),
            arch: "amd64".into(),
            sha256: "0".repeat(64),
            source: Some("glibc".into()),
            license: None,
        };
        assert_eq!(
            purl(&p, "debian/bookworm"),
            "pkg:deb/debian/libc6@1%3A2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn timestamps_and_uuids() {
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        // Cross-checked: python3 -c "import uuid; print(uuid.uuid5(uuid.NAMESPACE_URL, 'http://python.org/'))"
        assert_eq!(
            uuid_v5("http://python.org/"),
            "4c565f0d-3f5a-5890-b41b-20cf47701c5e"
        );
    }
}
