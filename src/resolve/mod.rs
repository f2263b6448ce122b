//! Dependency resolution over a Packages index: Depends and Pre-Depends with alternatives,
//! version relations (dpkg order), Provides (virtual and versioned), `:any`/`:native`
//! qualifiers. Recommends and Suggests are not followed; Essential packages are pulled in
//! only when something depends on them. Pure: index + requests in, package set out.

pub mod elf;
pub mod lock;
pub mod native;

use crate::archive::packages::{parse_relations, Package, Relation};
use crate::archive::version::{compare_versions, satisfies};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The packages of one architecture (plus `all`), by name, every version the index has.
#[derive(Default)]
pub struct Index {
    by_name: BTreeMap<String, Vec<Package>>,
    /// virtual name -> (provider name, provider version, provided version if versioned)
    providers: BTreeMap<String, Vec<(String, String, Option<String>)>>,
}

impl Index {
    /// Build from packages; those of other architectures than `arch` and `all` are ignored.
    pub fn new(packages: impl IntoIterator<Item = Package>, arch: &str) -> Result<Index> {
        let mut idx = Index::default();
        for p in packages {
            if p.architecture != arch && p.architecture != "all" {
                continue;
            }
            for alts in parse_relations(&p.provides)
                .with_context(|| format!("Provides of {} {}", p.name, p.version))?
            {
                for r in alts {
                    idx.providers.entry(r.name.clone()).or_default().push((
                        p.name.clone(),
                        p.version.clone(),
                        r.version.clone(),
                    ));
                }
            }
            idx.by_name.entry(p.name.clone()).or_default().push(p);
        }
        for v in idx.by_name.values_mut() {
            // newest first
            v.sort_by(|a, b| compare_versions(&b.version, &a.version));
        }
        for v in idx.providers.values_mut() {
            v.sort();
        }
        Ok(idx)
    }

    /// Every version of `name`, newest first.
    pub fn versions(&self, name: &str) -> &[Package] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every package name of the index, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn newest(&self, name: &str) -> Option<&Package> {
        self.versions(name).first()
    }

    /// The exact version of a package.
    pub fn get(&self, name: &str, version: &str) -> Option<&Package> {
        self.versions(name).iter().find(|p| p.version == version)
    }
}

/// Does `version` satisfy the relation's version constraint (none: always)?
fn version_ok(r: &Relation, version: &str) -> Result<bool> {
    match (&r.op, &r.version) {
        (Some(op), Some(v)) => satisfies(version, op, v),
        _ => Ok(true),
    }
}

fn show(r: &Relation) -> String {
    match (&r.op, &r.version) {
        (Some(op), Some(v)) => format!("{} ({op} {v})", r.name),
        _ => r.name.clone(),
    }
}

fn show_alts(alts: &[Relation]) -> String {
    alts.iter().map(show).collect::<Vec<_>>().join(" | ")
}

/// Is the relation satisfied by a package already chosen (directly or through Provides)?
fn satisfied_by(chosen: &BTreeMap<String, Package>, r: &Relation) -> Result<bool> {
    if let Some(p) = chosen.get(&r.name) {
        if version_ok(r, &p.version)? {
            return Ok(true);
        }
    }
    for p in chosen.values() {
        for alts in parse_relations(&p.provides)? {
            for pr in alts {
                if pr.name != r.name {
                    continue;
                }
                match (&r.op, &pr.version) {
                    (None, _) => return Ok(true),
                    (Some(_), Some(pv)) if version_ok(r, pv)? => return Ok(true),
                    _ => {}
                }
            }
        }
    }
    Ok(false)
}

/// Candidates for one relation, best first: real packages (newest satisfying version),
/// then providers (versioned provides must satisfy a versioned relation).
fn candidates<'a>(idx: &'a Index, r: &Relation) -> Result<Vec<&'a Package>> {
    let mut out = Vec::new();
    for p in idx.versions(&r.name) {
        if version_ok(r, &p.version)? {
            out.push(p);
        }
    }
    if let Some(provs) = idx.providers.get(&r.name) {
        for (name, version, provided) in provs {
            let ok = match (&r.op, provided) {
                (None, _) => true,
                (Some(_), Some(pv)) => version_ok(r, pv)?,
                (Some(_), None) => false,
            };
            if ok {
                if let Some(p) = idx.get(name, version) {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// Resolve the closure of `roots` (each a relation string such as `libssl3` or
/// `zlib1g (>= 1:1.2)`): every package in the result has its Depends and Pre-Depends
/// satisfied within the result. Deterministic: same index + roots = same result.
/// Errors name the unsatisfiable relation and the chain of packages that led to it.
pub fn resolve(idx: &Index, roots: &[String]) -> Result<Vec<Package>> {
    Ok(resolve_excluding(idx, roots, &[])?.0)
}

/// [`resolve`], leaving out the packages named in `exclude` (unless a root names them) and
/// whatever only they would pull in: a relation whose chosen candidate is excluded counts
/// as satisfied. This is where dead-weight packages (what a headless runtime never loads)
/// are dropped, so the lock pins exactly what the image holds. Returns the packages and
/// the names left out (sorted).
pub fn resolve_excluding(
    idx: &Index,
    roots: &[String],
    exclude: &[&str],
) -> Result<(Vec<Package>, Vec<String>)> {
    let mut root_names = BTreeSet::new();
    for root in roots {
        for alts in
            parse_relations(root).with_context(|| format!("bad package request {root:?}"))?
        {
            root_names.extend(alts.into_iter().map(|r| r.name));
        }
    }
    let mut left_out = BTreeSet::new();
    let mut chosen: BTreeMap<String, Package> = BTreeMap::new();
    // (alternatives, chain of package names that led here)
    let mut queue: VecDeque<(Vec<Relation>, Vec<String>)> = VecDeque::new();
    for root in roots {
        for alts in
            parse_relations(root).with_context(|| format!("bad package request {root:?}"))?
        {
            queue.push_back((alts, Vec::new()));
        }
    }
    while let Some((alts, chain)) = queue.pop_front() {
        let mut done = false;
        for r in &alts {
            if satisfied_by(&chosen, r)? {
                done = true;
                break;
            }
        }
        if done {
            continue;
        }
        // Pick the first alternative with a candidate that does not clash with a chosen
        // package of the same name.
        let mut pick = None;
        let mut reasons = Vec::new();
        for r in &alts {
            let cands = candidates(idx, r)?;
            if cands.is_empty() {
                let have: Vec<&str> = idx
                    .versions(&r.name)
                    .iter()
                    .map(|p| p.version.as_str())
                    .collect();
                reasons.push(if have.is_empty() {
                    format!("{} is not in the archive", r.name)
                } else {
                    format!("{} needed, archive has {}", show(r), have.join(", "))
                });
                continue;
            }
            match cands.into_iter().find(|c| !chosen.contains_key(&c.name)) {
                Some(c) => {
                    pick = Some(c);
                    break;
                }
                None => reasons.push(format!(
                    "{} needed, but {} {} was already chosen",
                    show(r),
                    r.name,
                    chosen
                        .get(&r.name)
                        .map(|p| p.version.as_str())
                        .unwrap_or("?")
                )),
            }
        }
        let Some(p) = pick else {
            let via = if chain.is_empty() {
                "requested".to_string()
            } else {
                format!("needed by {}", chain.join(" -> "))
            };
            bail!(
                "cannot satisfy {} ({via}): {}",
                show_alts(&alts),
                reasons.join("; ")
            );
        };
        if exclude.contains(&p.name.as_str()) && !root_names.contains(&p.name) {
            left_out.insert(p.name.clone());
            continue;
        }
        let mut next_chain = chain.clone();
        next_chain.push(format!("{} {}", p.name, p.version));
        for field in [&p.pre_depends, &p.depends] {
            for dep in parse_relations(field)
                .with_context(|| format!("dependencies of {} {}", p.name, p.version))?
            {
                queue.push_back((dep, next_chain.clone()));
            }
        }
        chosen.insert(p.name.clone(), p.clone());
    }
    check_conflicts(&chosen)?;
    Ok((
        chosen.into_values().collect(),
        left_out.into_iter().collect(),
    ))
}

/// Refuse a set where one package Conflicts with or Breaks another.
fn check_conflicts(chosen: &BTreeMap<String, Package>) -> Result<()> {
    for p in chosen.values() {
        for field in ["Conflicts", "Breaks"] {
            let Some(text) = p.fields.get(field) else {
                continue;
            };
            for alts in parse_relations(text)? {
                for r in alts {
                    if r.name == p.name {
                        continue;
                    }
                    if let Some(other) = chosen.get(&r.name) {
                        if version_ok(&r, &other.version)? {
                            bail!(
                                "{} {} {field} {} but {} {} is needed",
                                p.name,
                                p.version,
                                show(&r),
                                other.name,
                                other.version
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Names of packages in a set, sorted (for messages and the lock).
pub fn names(pkgs: &[Package]) -> BTreeSet<String> {
    pkgs.iter().map(|p| p.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::packages::parse_packages;

    fn index(text: &str) -> Index {
        Index::new(parse_packages(text).unwrap(), "amd64").unwrap()
    }

    fn pkg(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/{name}_{version}.deb\nSize: 1\nSHA256: {}\n{extra}\n",
            "0".repeat(64)
        )
    }

    fn resolved(idx: &Index, roots: &[&str]) -> Result<Vec<(String, String)>> {
        let r = resolve(
            idx,
            &roots.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(r.into_iter().map(|p| (p.name, p.version)).collect())
    }

    #[test]
    fn follows_depends_and_pre_depends_not_recommends() {
        let idx = index(
            &[
                pkg(
                    "app",
                    "1",
                    "Depends: liba (>= 2)\nPre-Depends: libc6\nRecommends: bloat\nSuggests: more",
                ),
                pkg("liba", "1", ""),
                pkg("liba", "2.1", "Depends: libc6"),
                pkg("libc6", "2.36", ""),
                pkg("bloat", "1", ""),
                pkg("more", "1", ""),
                pkg("essential-thing", "1", "Essential: yes"),
            ]
            .join("\n"),
        );
        let r = resolved(&idx, &["app"]).unwrap();
        assert_eq!(
            r,
            [
                ("app".into(), "1".into()),
                ("liba".into(), "2.1".into()),
                ("libc6".into(), "2.36".into())
            ]
        );
    }

    #[test]
    fn alternatives_prefer_first_then_fall_back() {
        let idx = index(
            &[
                pkg("app", "1", "Depends: missing | libb, libc (>= 3) | libd"),
                pkg("libb", "1", ""),
                pkg("libc", "2", ""),
                pkg("libd", "1", ""),
            ]
            .join("\n"),
        );
        let r = resolved(&idx, &["app"]).unwrap();
        let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["app", "libb", "libd"]);
    }

    #[test]
    fn an_already_chosen_alternative_satisfies() {
        let idx = index(
            &[
                pkg("app", "1", "Depends: liby, libx | liby"),
                pkg("libx", "1", ""),
                pkg("liby", "1", ""),
            ]
            .join("\n"),
        );
        let names: Vec<String> = resolved(&idx, &["app"])
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(names, ["app", "liby"]);
    }

    #[test]
    fn virtual_and_versioned_provides() {
        let idx = index(
            &[
                pkg(
                    "app",
                    "1",
                    "Depends: mail-transport-agent, libfoo-abi (>= 2)",
                ),
                pkg("postfix", "3", "Provides: mail-transport-agent"),
                pkg("libfoo-old", "1", "Provides: libfoo-abi (= 1)"),
                pkg("libfoo-new", "2", "Provides: libfoo-abi (= 2)"),
                pkg("unversioned", "9", "Provides: libfoo-abi"),
            ]
            .join("\n"),
        );
        let names: Vec<String> = resolved(&idx, &["app"])
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(names, ["app", "libfoo-new", "postfix"]);
    }

    #[test]
    fn arch_qualifiers_and_other_architectures() {
        let text = [
            pkg("app", "1", "Depends: python3:any, libz:native"),
            pkg("python3", "3.11", "Multi-Arch: allowed"),
            pkg("libz", "1", ""),
        ]
        .join("\n")
            + "\nPackage: libz\nVersion: 9\nArchitecture: arm64\nFilename: x\nSize: 1\nSHA256: "
            + &"0".repeat(64)
            + "\n";
        let idx = index(&text);
        let r = resolved(&idx, &["app"]).unwrap();
        assert!(r.contains(&("libz".into(), "1".into())), "{r:?}");
        assert!(r.contains(&("python3".into(), "3.11".into())));
    }

    #[test]
    fn unsatisfiable_version_names_the_chain() {
        let idx = index(
            &[
                pkg("app", "1", "Depends: bar"),
                pkg("bar", "1", "Depends: libfoo (>= 2)"),
                pkg("libfoo", "1.9", ""),
            ]
            .join("\n"),
        );
        let e = format!("{:#}", resolve(&idx, &["app".into()]).unwrap_err());
        assert!(e.contains("libfoo (>= 2)"), "{e}");
        assert!(e.contains("archive has 1.9"), "{e}");
        assert!(e.contains("app 1 -> bar 1"), "{e}");
    }

    #[test]
    fn version_clash_between_two_paths_is_reported() {
        let idx = index(
            &[
                pkg("app", "1", "Depends: pa, pb"),
                pkg("pa", "1", "Depends: libx (= 1)"),
                pkg("pb", "1", "Depends: libx (= 2)"),
                pkg("libx", "1", ""),
                pkg("libx", "2", ""),
            ]
            .join("\n"),
        );
        let e = format!("{:#}", resolve(&idx, &["app".into()]).unwrap_err());
        assert!(
            e.contains("libx (= 2)") && e.contains("already chosen") && e.contains("app 1 -> pb 1"),
            "{e}"
        );
    }

    #[test]
    fn conflicts_are_refused() {
        let idx = index(
            &[
                pkg("app", "1", "Depends: pa, pb"),
                pkg("pa", "1", "Conflicts: pb"),
                pkg("pb", "1", ""),
            ]
            .join("\n"),
        );
        let e = format!("{:#}", resolve(&idx, &["app".into()]).unwrap_err());
        assert!(e.contains("Conflicts"), "{e}");
    }

    #[test]
    fn excluded_packages_and_what_only_they_need_are_left_out() {
        let idx = index(
            &[
                pkg(
                    "jre",
                    "1",
                    "Depends: libc6, libcups2, java-common, zlib1g | libz-virtual",
                ),
                pkg("libcups2", "1", "Depends: libavahi, libc6"),
                pkg("libavahi", "1", "Depends: libc6"),
                pkg("libc6", "1", ""),
                pkg("java-common", "1", ""),
                pkg("zlib1g", "1", "Depends: libc6\nProvides: libz-virtual"),
            ]
            .join("\n"),
        );
        let (pkgs, out) = resolve_excluding(&idx, &["jre".into()], &["libcups2"]).unwrap();
        let names: Vec<String> = pkgs.into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["java-common", "jre", "libc6", "zlib1g"]);
        assert_eq!(out, ["libcups2"]);
        // Asked for explicitly: kept, with what it needs.
        let (pkgs, out) =
            resolve_excluding(&idx, &["jre".into(), "libcups2".into()], &["libcups2"]).unwrap();
        assert!(pkgs.iter().any(|p| p.name == "libavahi"));
        assert!(out.is_empty());
    }

    #[test]
    fn missing_root_is_an_error() {
        let idx = index(&pkg("pa", "1", ""));
        let e = format!("{:#}", resolve(&idx, &["nope".into()]).unwrap_err());
        assert!(
            e.contains("nope is not in the archive") && e.contains("requested"),
            "{e}"
        );
    }

    #[test]
    fn dpkg_version_order_table() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("1.0~rc1", "1.0", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0-1", "1.0-2", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u13", Less),
            ("6.1.0-28", "6.1.0-9", Greater),
            ("1.0a", "1.0+", Less),
            ("1.0", "1.0", Equal),
            ("1.2.13.dfsg-1", "1:1.2.13.dfsg-1", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
    }
}
