//! Env files (`KEY=VALUE` lines), the boot-time configuration format, checked on the host
//! with the init's rules (init/src/app.rs `parse_env_file`). Values are never echoed: errors
//! name line numbers and keys only, because env files hold secrets.

use anyhow::{bail, Result};

/// True for an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The keys an env file sets (sorted, each once), or an error naming every line that is not
/// blank, a `#` comment, or `KEY=VALUE` (by number only). Same grammar as the init: leading
/// white space and CRLF line ends are accepted; a later line for the same key wins.
pub fn check(data: &[u8]) -> Result<Vec<String>> {
    let mut keys = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            bad.push(i + 1);
            continue;
        };
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if valid_key(k.trim_end()) && !v.contains('\0') => {
                keys.insert(k.trim_end().to_string());
            }
            _ => bad.push(i + 1),
        }
    }
    if !bad.is_empty() {
        let lines: Vec<String> = bad.iter().map(|n| n.to_string()).collect();
        bail!(
            "not an env file: line(s) {} are not KEY=VALUE (KEY is [A-Za-z_][A-Za-z0-9_]*; \
             values are not shown)",
            lines.join(", ")
        );
    }
    Ok(keys.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_init_grammar() {
        let keys = check(b"# c\n\nA=1\r\n  B = x\nA=2\nEMPTY=\nQ=\"q q\"\n").unwrap();
        assert_eq!(keys, ["A", "B", "EMPTY", "Q"]);
    }

    #[test]
    fn refuses_bad_lines_by_number_without_values() {
        let e = format!(
            "{:#}",
            check(b"OK=1\nno equals sign secret\n1X=secret2\nA-B=3\n").unwrap_err()
        );
        assert!(e.contains("2, 3, 4"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert!(check(b"A=\xff\xfe\n").is_err());
        assert!(check(b"A=a\0b\n").is_err());
    }
}
