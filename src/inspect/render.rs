//! Human-readable output of `fuse inspect`: grouped sections and small aligned tables.
//! Pure: values in, text out (the command prints it).

use super::diff::{FieldChange, ImageDiff, Status};
use super::verify::Image;
use crate::disk::ImageMeta;
use crate::util::text::one_line;
use serde_json::Value;

/// `12.0 MiB`, `4.0 KiB`, `512 B`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `+4.0 KiB`, `-17 B`, `0 B`.
pub fn size_delta(d: i64) -> String {
    let s = size(d.unsigned_abs());
    match d.signum() {
        1 => format!("+{s}"),
        -1 => format!("-{s}"),
        _ => s,
    }
}

/// `+17`, `-3`, `0` (exact bytes).
fn bytes_delta(d: i64) -> String {
    if d > 0 {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

/// A digest shortened for tables: `sha256:0123456789ab`.
pub fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", hex.get(..12).unwrap_or(hex))
}

/// An aligned table; columns listed in `right` are right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize], indent: &str) -> String {
    let cols = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(indent);
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                s.push_str("  ");
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A date from seconds since the epoch: `2024-02-10 12:00:00 UTC`.
pub fn utc(epoch: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(epoch);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// (year, month, day, hour, minute, second) of a Unix time, proleptic Gregorian, UTC.
pub fn civil(epoch: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs % 3600 / 60) as u32,
        (secs % 60) as u32,
    )
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The summary of one image.
pub fn summary(file: &str, img: &Image, m: &ImageMeta) -> String {
    let mut o = String::new();
    o.push_str(&format!("{} {}  {}\n", m.name, m.version, img.digest));
    o.push_str(&format!("  arch      {}\n", m.arch));
    o.push_str(&format!(
        "  file      {file} ({} bytes, {})\n",
        img.size,
        size(img.size)
    ));
    if let Some(w) = &img.wrapper {
        o.push_str(&format!(
            "  format    {} ({} bytes, {}); the digest is the raw disk's inside it\n",
            w.format,
            w.file_size,
            size(w.file_size)
        ));
    }
    if img.report.ok() {
        o.push_str(&format!(
            "  verified  GPT, ESP and UKI, {} layer digest{}{}\n",
            m.layers.len(),
            if m.layers.len() == 1 { "" } else { "s" },
            if img.report.checked.iter().any(|c| c.contains("beside")) {
                ", the image.json beside it (digest and content)"
            } else {
                ""
            }
        ));
    } else {
        o.push_str(&format!(
            "  verified  FAILED ({} problem{})\n",
            img.report.problems.len(),
            if img.report.problems.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
        for p in &img.report.problems {
            o.push_str(&format!("    ! {p}\n"));
        }
    }

    o.push_str("\nbuilt from\n");
    let i = &m.inputs;
    let mut rows = vec![
        ("manifest", format!("sha256:{}", i.manifest_sha256)),
        ("app", format!("sha256:{}", i.app_sha256)),
    ];
    if let Some(l) = &i.lock_sha256 {
        rows.push(("lock", format!("sha256:{l}")));
    }
    rows.push(("fuse", i.fuse_version.clone()));
    rows.push((
        "archive",
        match &i.archive_date {
            Some(d) => format!("{} ({d})", i.distribution),
            None => i.distribution.clone(),
        },
    ));
    rows.push((
        "epoch",
        format!("{} ({})", i.source_epoch, utc(i.source_epoch)),
    ));
    for (k, v) in rows {
        o.push_str(&format!("  {k:<9} {v}\n"));
    }

    o.push_str("\nboot\n");
    let k = &m.kernel;
    o.push_str(&format!(
        "  kernel    {} {} (release {}, {} modules in the initramfs)\n",
        k.package.name,
        k.package.version,
        k.release,
        k.modules.len()
    ));
    o.push_str(&format!("  cmdline   {}\n", k.cmdline));
    o.push_str(&format!(
        "  uki       {} ({}), initramfs {} ({}), stub {} {}\n",
        short(&m.boot.uki_sha256),
        size(m.boot.uki_size),
        short(&m.boot.initramfs_sha256),
        size(m.boot.initramfs_size),
        m.boot.stub.name,
        m.boot.stub.version
    ));

    match img.signatures.first() {
        None => o.push_str("  secure    unsigned (Secure Boot firmware refuses it)\n"),
        Some(sig) => o.push_str(&format!(
            "  secure    signed by {} (certificate sha256 {}), {}\n",
            sig.signer.subject,
            sig.signer.fingerprint,
            if sig.problems.is_empty() {
                "signature verified against it"
            } else {
                "signature does NOT verify"
            }
        )),
    }

    o.push_str("\napp\n");
    let a = &m.app;
    o.push_str(&format!("  kind        {}\n", a.kind));
    o.push_str(&format!(
        "  entrypoint  {}\n",
        a.argv
            .iter()
            .map(|s| shell_word(s))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    o.push_str(&format!("  workdir     {}\n", a.workdir));
    match &a.container {
        Some(c) => {
            o.push_str(&format!(
                "  user        {}:{}{} (the container's User {:?})\n",
                a.uid,
                a.gid,
                if a.uid == 0 { " root" } else { "" },
                one_line(&c.user)
            ));
            o.push_str(&format!("  container   {}\n", one_line(&c.reference)));
            if let Some(p) = &c.pinned {
                o.push_str(&format!("  pinned      {}\n", one_line(p)));
            }
            o.push_str(&format!("  manifest    {}\n", one_line(&c.manifest_digest)));
            o.push_str(&format!("  config      {}\n", one_line(&c.config_digest)));
            if let Some(sig) = &c.stop_signal {
                o.push_str(&format!(
                    "  stopsignal  {} (the container's)\n",
                    one_line(sig)
                ));
            }
            for (k, v) in &c.labels {
                o.push_str(&format!("  label       {}={}\n", one_line(k), one_line(v)));
            }
        }
        None => o.push_str(&format!("  user        {}:{}\n", a.uid, a.gid)),
    }
    o.push_str(&format!("  port        {}\n", a.port));
    o.push_str(&format!(
        "  health      {}\n",
        a.health_http
            .as_ref()
            .map(|h| format!("HTTP GET {h} answers 2xx"))
            .unwrap_or_else(|| "(none)".into())
    ));
    if let Some(t) = a.stop_timeout {
        o.push_str(&format!(
            "  stop        power button: {}, SIGKILL after {t} s\n",
            crate::util::text::one_line(a.stop_signal.as_deref().unwrap_or("SIGTERM"))
        ));
    }
    if let Some(l) = a.x86_64_level {
        o.push_str(&format!(
            "  cpu         x86-64-v{l} (the app's ELF notes: GNU_PROPERTY_X86_ISA_1_NEEDED)\n"
        ));
    }
    if !a.writable.is_empty() {
        o.push_str(&format!(
            "  writable    {} (tmpfs, owned by the app user)\n",
            a.writable.join(" ")
        ));
    }
    let mut first = true;
    for (k, v) in &a.env {
        let label = if first { "env" } else { "" };
        first = false;
        o.push_str(&format!("  {label:<11} {k}={}\n", shell_word(v)));
    }
    if a.env.is_empty() {
        o.push_str("  env         (none)\n");
    }

    o.push_str("\npartitions\n");
    let mut rows = Vec::new();
    for p in &img.partitions {
        let layer = m.layers.iter().find(|l| l.partition == p.name);
        rows.push(vec![
            p.index.to_string(),
            p.name.clone(),
            layer.map_or("ESP (UKI, image.json)".into(), |l| {
                format!("layer {} ({})", l.name, l.fs)
            }),
            size(layer.map_or(m.boot.esp_size, |l| l.size)),
            layer.map_or("-".into(), |l| {
                l.files
                    .iter()
                    .filter(|f| f.kind != "dir")
                    .count()
                    .to_string()
            }),
            layer.map_or("-".into(), |l| l.packages.len().to_string()),
            layer.map_or("-".into(), |l| short(&l.digest)),
        ]);
    }
    o.push_str(&table(
        &[
            "#",
            "PARTITION",
            "CONTENT",
            "SIZE",
            "FILES",
            "PACKAGES",
            "DIGEST",
        ],
        &rows,
        &[0, 3, 4, 5],
        "  ",
    ));
    let verity: Vec<Vec<String>> = m
        .layers
        .iter()
        .filter_map(|l| {
            l.verity.as_ref().map(|v| {
                vec![
                    l.name.clone(),
                    v.root_hash.clone(),
                    l.partuuid.clone().unwrap_or_else(|| "-".into()),
                ]
            })
        })
        .collect();
    if !verity.is_empty() {
        o.push_str(&format!(
            "\ndm-verity (sha256, 4 KiB blocks; root hashes in the boot plan inside the UKI{})\n",
            if img.report.ok() {
                "; recomputed from the bytes"
            } else {
                ""
            }
        ));
        o.push_str(&table(
            &["LAYER", "ROOT HASH", "PARTITION GUID"],
            &verity,
            &[],
            "  ",
        ));
    }

    for l in m.layers.iter().filter(|l| !l.java_modules.is_empty()) {
        o.push_str(&format!(
            "\nJDK modules in layer {} ({})\n",
            l.name,
            l.java_modules.len()
        ));
        o.push_str(&wrap(&l.java_modules.join(" "), 88, "  "));
    }

    let mut pk = vec![("boot (UKI)".to_string(), &m.kernel.package)];
    pk.push(("boot (UKI)".into(), &m.boot.stub));
    for l in &m.layers {
        for p in &l.packages {
            pk.push((format!("layer {}", l.name), p));
        }
    }
    pk.sort_by(|a, b| (&a.1.name, &a.1.arch).cmp(&(&b.1.name, &b.1.arch)));
    o.push_str(&format!("\npackages ({})\n", pk.len()));
    let rows: Vec<Vec<String>> = pk
        .iter()
        .map(|(w, p)| {
            vec![
                p.name.clone(),
                p.version.clone(),
                p.arch.clone(),
                w.clone(),
                p.license.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    o.push_str(&table(
        &["NAME", "VERSION", "ARCH", "WHERE", "LICENCE"],
        &rows,
        &[],
        "  ",
    ));
    for db in m.app.container.iter().flat_map(|c| &c.packages) {
        o.push_str(&format!(
            "
container packages ({}, {} in layer {}, {})
",
            db.installed.len(),
            one_line(&db.path),
            one_line(&db.layer),
            one_line(db.distro.as_deref().unwrap_or(&db.vendor))
        ));
        let rows: Vec<Vec<String>> = db
            .installed
            .iter()
            .map(|p| {
                vec![
                    one_line(&p.name).into_owned(),
                    one_line(&p.version).into_owned(),
                    one_line(&p.arch).into_owned(),
                    one_line(p.source.as_deref().unwrap_or("-")).into_owned(),
                ]
            })
            .collect();
        o.push_str(&table(
            &["NAME", "VERSION", "ARCH", "SOURCE"],
            &rows,
            &[],
            "  ",
        ));
    }
    o
}

fn value(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => shell_word(s),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn fields(o: &mut String, fs: &[FieldChange]) {
    for f in fs {
        o.push_str(&format!(
            "  ~ {}: {} -> {}\n",
            f.field,
            value(&f.from),
            value(&f.to)
        ));
    }
}

/// The comparison of two images.
pub fn diff(d: &ImageDiff) -> String {
    let mut o = String::new();
    let side = |label: &str, s: &super::diff::Side| {
        format!(
            "{label}  {} {}  {}  {}  {}\n",
            s.name,
            s.version,
            s.digest,
            size(s.size),
            s.file
        )
    };
    o.push_str(&side("old", &d.old));
    o.push_str(&side("new", &d.new));
    if d.identical {
        o.push_str("\nidentical: the same bytes\n");
        return o;
    }

    o.push('\n');
    let mut rows = Vec::new();
    let mut boot_what = Vec::new();
    if d.kernel.changed {
        boot_what.push("kernel");
    }
    for (f, what) in [
        ("initramfs_sha256", "initramfs (boot plan, modules)"),
        ("stub", "EFI stub"),
    ] {
        if d.boot.fields.iter().any(|x| x.field == f) {
            boot_what.push(what);
        }
    }
    rows.push(vec![
        "boot (UKI)".into(),
        if d.boot.changed || d.kernel.changed {
            "changed"
        } else {
            "unchanged"
        }
        .into(),
        size(d.size.uki.from),
        size(d.size.uki.to),
        size_delta(d.size.uki.delta),
        boot_what.join(", "),
    ]);
    for l in &d.layers {
        let mut what = Vec::new();
        if !l.packages.is_empty() {
            what.push(format!("{} package change(s)", l.packages.count()));
        }
        if !l.files.is_empty() {
            what.push(format!("{} file change(s)", l.files.count()));
        }
        let jm = l.java_modules_added.len() + l.java_modules_removed.len();
        if jm > 0 {
            what.push(format!("{jm} JDK module change(s)"));
        }
        rows.push(vec![
            format!("layer {}", l.name),
            l.status.as_str().into(),
            l.from.as_ref().map_or("-".into(), |s| size(s.size)),
            l.to.as_ref().map_or("-".into(), |s| size(s.size)),
            size_delta(l.size_delta),
            what.join(", "),
        ]);
    }
    rows.push(vec![
        "disk".into(),
        String::new(),
        size(d.size.disk.from),
        size(d.size.disk.to),
        size_delta(d.size.disk.delta),
        String::new(),
    ]);
    o.push_str(&table(
        &["PART", "STATUS", "OLD", "NEW", "DELTA", "CHANGES"],
        &rows,
        &[2, 3, 4],
        "",
    ));

    if !d.image.is_empty() {
        o.push_str("\nimage\n");
        fields(&mut o, &d.image);
    }
    for l in d.layers.iter().filter(|l| l.status != Status::Unchanged) {
        o.push_str(&format!("\nlayer {} ({})\n", l.name, l.status.as_str()));
        if let (Some(f), Some(t)) = (&l.from, &l.to) {
            o.push_str(&format!(
                "  digest {} -> {}\n",
                short(&f.digest),
                short(&t.digest)
            ));
        }
        if !l.java_modules_added.is_empty() || !l.java_modules_removed.is_empty() {
            o.push_str(&format!(
                "  JDK modules ({})\n",
                l.java_modules_added.len() + l.java_modules_removed.len()
            ));
            for m in &l.java_modules_added {
                o.push_str(&format!("    + {m}\n"));
            }
            for m in &l.java_modules_removed {
                o.push_str(&format!("    - {m}\n"));
            }
        }
        let p = &l.packages;
        if !p.is_empty() {
            o.push_str(&format!("  packages ({})\n", p.count()));
            let mut lines: Vec<(String, String)> = Vec::new();
            for c in &p.changed {
                let what = if c.from == c.to {
                    format!("{} (rebuilt: .deb sha256 differs)", c.to)
                } else {
                    format!("{} -> {}", c.from, c.to)
                };
                lines.push((c.name.clone(), format!("    ~ {} {what}\n", c.name)));
            }
            for a in &p.added {
                lines.push((a.name.clone(), format!("    + {} {}\n", a.name, a.version)));
            }
            for r in &p.removed {
                lines.push((r.name.clone(), format!("    - {} {}\n", r.name, r.version)));
            }
            lines.sort();
            for (_, l) in lines {
                o.push_str(&l);
            }
        }
        let f = &l.files;
        if !f.is_empty() {
            o.push_str(&format!(
                "  files ({} added, {} removed, {} modified)\n",
                f.added.len(),
                f.removed.len(),
                f.modified.len()
            ));
            let mut lines: Vec<(String, String)> = Vec::new();
            for m in &f.modified {
                let sz = if m.from_size != m.to_size {
                    format!(
                        "{} -> {} bytes ({})",
                        m.from_size,
                        m.to_size,
                        bytes_delta(m.size_delta)
                    )
                } else {
                    format!("{} bytes", m.to_size)
                };
                lines.push((
                    m.path.clone(),
                    format!("    ~ {}  {sz}  [{}]\n", m.path, m.changed.join(", ")),
                ));
            }
            for a in &f.added {
                lines.push((
                    a.path.clone(),
                    format!("    + {}  {} ({} bytes)\n", a.path, a.kind, a.size),
                ));
            }
            for r in &f.removed {
                lines.push((
                    r.path.clone(),
                    format!("    - {}  {} ({} bytes)\n", r.path, r.kind, r.size),
                ));
            }
            lines.sort();
            for (_, l) in lines {
                o.push_str(&l);
            }
        }
    }
    if d.kernel.changed {
        o.push_str("\nkernel\n");
        fields(&mut o, &d.kernel.fields);
        for m in &d.kernel.modules_added {
            o.push_str(&format!("  + module {m}\n"));
        }
        for m in &d.kernel.modules_removed {
            o.push_str(&format!("  - module {m}\n"));
        }
    }
    if d.boot.changed {
        o.push_str("\nboot\n");
        fields(&mut o, &d.boot.fields);
    }
    if d.app.changed {
        o.push_str("\napp\n");
        fields(&mut o, &d.app.fields);
        for e in &d.app.env {
            match (&e.from, &e.to) {
                (None, Some(t)) => o.push_str(&format!("  + env {}={}\n", e.name, shell_word(t))),
                (Some(f), None) => o.push_str(&format!("  - env {}={}\n", e.name, shell_word(f))),
                (Some(f), Some(t)) => o.push_str(&format!(
                    "  ~ env {}: {} -> {}\n",
                    e.name,
                    shell_word(f),
                    shell_word(t)
                )),
                (None, None) => {}
            }
        }
        for c in &d.app.container_packages {
            let what = format!("{} ({}, {})", one_line(&c.name), c.kind, one_line(&c.arch));
            match (&c.from, &c.to) {
                (None, Some(t)) => o.push_str(&format!("  + package {what} {}\n", one_line(t))),
                (Some(f), None) => o.push_str(&format!("  - package {what} {}\n", one_line(f))),
                (Some(f), Some(t)) => o.push_str(&format!(
                    "  ~ package {what}: {} -> {}\n",
                    one_line(f),
                    one_line(t)
                )),
                (None, None) => {}
            }
        }
    }
    if !d.inputs.is_empty() {
        o.push_str("\ninputs\n");
        fields(&mut o, &d.inputs);
    }
    for n in &d.notes {
        o.push_str(&format!("\nnote: {n}\n"));
    }
    o.push_str(&format!(
        "\n{} difference{}; disk {} -> {} ({}), layers {} -> {} ({})\n",
        d.differences,
        if d.differences == 1 { "" } else { "s" },
        size(d.size.disk.from),
        size(d.size.disk.to),
        size_delta(d.size.disk.delta),
        size(d.size.layers.from),
        size(d.size.layers.to),
        size_delta(d.size.layers.delta),
    ));
    o
}

/// `text` wrapped at spaces to lines of at most `width` characters, each indented.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + w.len() > width {
            out.push_str(&format!("{indent}{line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        out.push_str(&format!("{indent}{line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dates() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4096), "4.0 KiB");
        assert_eq!(size(12_582_912), "12.0 MiB");
        assert_eq!(size_delta(-17), "-17 B");
        assert_eq!(size_delta(4096), "+4.0 KiB");
        assert_eq!(size_delta(0), "0 B");
        // Cross-checked with `date -u -d @...`.
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "NUM"],
            &[
                vec!["long name".into(), "1".into()],
                vec!["x".into(), "100".into()],
            ],
            &[1],
            "",
        );
        assert_eq!(t, "A          NUM\nlong name    1\nx          100\n");
    }
}
