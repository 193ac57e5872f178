//! Architecture: which parts of the crate may name which.
//!
//! Owns: the import rules of `src/` and the small scanner that checks them.
//! A rule is a folder (or file) under the manifest directory, the paths its
//! sources must never name, and why. The scanner strips comments, strings and
//! char literals, expands `use` trees (`use std::{fs, time::Instant}` names
//! `std::fs` and `std::time::Instant`), resolves `self::` and `super::`
//! against the file's module (including inline `mod x { }` blocks), and
//! reports every violation at once as `file:line: names X (reason)`.
//! Never: compiles or runs the code it reads; it is a text check, so the
//! scanner's own tests below prove it can fail.
//!
//! To add a rule, append a [`Rule`] to [`RULES`]; a rule whose scope matches
//! no file fails the test, so a typo in a folder name cannot pass silently.

use std::path::{Path, PathBuf};

/// What a rule forbids a file to name.
#[derive(Debug, Clone, Copy)]
enum Names {
    /// A path starting with these segments: `tokio` forbids `tokio::spawn`,
    /// `crate::store` forbids `crate::store::SqliteStore` but not `crate::stores`.
    Prefix(&'static str),
    /// These segments in a row anywhere in a path, however it was imported:
    /// `Instant::now` forbids `std::time::Instant::now` and `Instant::now`.
    Anywhere(&'static str),
    /// Anything of this crate outside the given top-level module: `stats`
    /// forbids `crate::store` (and `super::super::store` from `src/stats/x.rs`)
    /// but allows `crate::stats::mixture`.
    CrateOutside(&'static str),
}

/// One import rule.
struct Rule {
    /// A folder or file relative to the manifest directory, e.g. `src/stats`.
    scope: &'static str,
    /// What files in scope must never name.
    forbidden: &'static [Names],
    /// Why, printed with each violation.
    reason: &'static str,
}

use Names::{Anywhere, CrateOutside, Prefix};

/// The rules of the crate, checked against every file under `src/`.
const RULES: &[Rule] = &[
    Rule {
        scope: "src/stats",
        forbidden: &[CrateOutside("stats")],
        reason: "stats is the lowest layer: it names nothing of the crate outside itself",
    },
    Rule {
        scope: "src/stats",
        forbidden: &[
            Prefix("tokio"),
            Prefix("std::fs"),
            Prefix("std::net"),
            Prefix("std::thread"),
        ],
        reason: "stats is pure: no I/O, no tasks, no threads",
    },
    Rule {
        scope: "src/stats",
        forbidden: &[
            Prefix("std::time::Instant"),
            Prefix("std::time::SystemTime"),
            Anywhere("Instant::now"),
            Anywhere("SystemTime::now"),
        ],
        reason: "stats has no clock: the caller passes time-related facts in",
    },
    Rule {
        scope: "src/stats",
        forbidden: &[Prefix("rand"), Prefix("rand_distr"), Prefix("getrandom")],
        reason: "stats is deterministic: same inputs, same verdict",
    },
    // The decision rule's layers run one way (policy <- snapshot <- evidence
    // <- decide <- explain <- analyze), so no import cycle can come back.
    Rule {
        scope: "src/stats/policy.rs",
        forbidden: &[
            Prefix("crate::stats::snapshot"),
            Prefix("crate::stats::evidence"),
            Prefix("crate::stats::decide"),
            Prefix("crate::stats::explain"),
            Prefix("crate::stats::analyze"),
        ],
        reason: "policy is the decision rule's lowest layer",
    },
    Rule {
        scope: "src/stats/snapshot.rs",
        forbidden: &[
            Prefix("crate::stats::evidence"),
            Prefix("crate::stats::decide"),
            Prefix("crate::stats::explain"),
            Prefix("crate::stats::analyze"),
        ],
        reason: "a snapshot is the input of a look; it knows only the policy",
    },
    Rule {
        scope: "src/stats/evidence.rs",
        forbidden: &[
            Prefix("crate::stats::decide"),
            Prefix("crate::stats::explain"),
            Prefix("crate::stats::analyze"),
        ],
        reason: "evidence sits below the decision rule that reads it",
    },
    Rule {
        scope: "src/stats/decide.rs",
        forbidden: &[Prefix("crate::stats::explain"), Prefix("crate::stats::analyze")],
        reason: "the decision rule does not depend on how it is explained",
    },
    Rule {
        scope: "src/proxy",
        forbidden: &[
            Prefix("crate::store"),
            Prefix("crate::control"),
            Prefix("crate::controller"),
        ],
        reason: "the data plane reads one routing snapshot; it never names the store or the control plane",
    },
    Rule {
        scope: "src/routing",
        forbidden: &[
            Prefix("crate::store"),
            Prefix("crate::control"),
            Prefix("crate::controller"),
        ],
        reason: "routing is built from config and read per request; it never names the store or the control plane",
    },
    Rule {
        scope: "src/routing",
        forbidden: &[
            Prefix("crate::proxy"),
            Prefix("crate::outcomes"),
            Prefix("crate::telemetry"),
            Prefix("hyper"),
            Prefix("hyper_util"),
            Prefix("tokio"),
            Prefix("std::net"),
        ],
        reason: "routing is pure: the table is generic over what an arm carries, so it builds no client and touches no recorder",
    },
    Rule {
        scope: "src/outcomes/feedback.rs",
        forbidden: &[Prefix("http"), Prefix("hyper"), Prefix("crate::proxy")],
        reason: "feedback ingestion is the domain half; its HTTP half is proxy::feedback",
    },
    Rule {
        scope: "src/outcomes/scan",
        forbidden: &[
            Prefix("http"),
            Prefix("hyper"),
            Prefix("tokio"),
            Prefix("std::time::Instant"),
            Anywhere("Instant::now"),
            Prefix("crate::telemetry"),
        ],
        reason: "the response scanner is pure: bytes and their arrival times in, a report out; the proxy reads headers and clocks",
    },
    Rule {
        scope: "src/outcomes",
        forbidden: &[
            Prefix("crate::proxy"),
            Prefix("crate::control"),
            Prefix("crate::admin"),
            Prefix("crate::app"),
        ],
        reason: "outcomes are recorded by the proxy and read by the control plane; they name neither",
    },
    Rule {
        scope: "src/store",
        forbidden: &[
            Prefix("crate::outcomes"),
            Prefix("crate::proxy"),
            Prefix("crate::routing"),
            Prefix("crate::control"),
            Prefix("crate::admin"),
        ],
        reason: "the store is below everything that uses it: it speaks in its own records",
    },
    Rule {
        scope: "src/config",
        forbidden: &[
            Prefix("crate::proxy"),
            Prefix("crate::routing"),
            Prefix("crate::control"),
            Prefix("crate::store"),
            Prefix("crate::outcomes"),
        ],
        reason: "config is read by every layer and reads none of them (only stats, for the one validator)",
    },
    Rule {
        scope: "src/stats",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/config",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/store",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/routing",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/outcomes",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/telemetry",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/proxy",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/control",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/admin",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/app.rs",
        forbidden: &[Prefix("crate::cli"), Prefix("crate::lab")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
    Rule {
        scope: "src/lab",
        forbidden: &[Prefix("crate::cli")],
        reason: "the CLI is the top floor and the lab sits just below it: nothing under them names them",
    },
];

#[test]
fn the_sources_follow_every_import_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut matched = vec![0usize; RULES.len()];
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        for (i, rule) in RULES.iter().enumerate() {
            matched[i] += usize::from(in_scope(rule.scope, &rel));
        }
        let source = std::fs::read_to_string(file).unwrap();
        violations.extend(check(&rel, &source, RULES));
    }
    for (rule, n) in RULES.iter().zip(&matched) {
        assert!(*n > 0, "rule scope {} matches no file", rule.scope);
    }
    assert!(
        violations.is_empty(),
        "{} import rule violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn in_scope(scope: &str, file: &str) -> bool {
    file == scope
        || file
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every violation of `rules` in one source file, as `file:line: names X (reason)`.
/// `file` is relative to the manifest directory (`src/stats/mixture.rs`).
fn check(file: &str, source: &str, rules: &[Rule]) -> Vec<String> {
    let rules: Vec<&Rule> = rules.iter().filter(|r| in_scope(r.scope, file)).collect();
    if rules.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for named in names(file, source) {
        for rule in &rules {
            if rule.forbidden.iter().any(|f| forbids(*f, &named.resolved)) {
                let written = named.written.join("::");
                let resolved = named.resolved.join("::");
                let what = if written == resolved {
                    written
                } else {
                    format!("{written} (= {resolved})")
                };
                out.push(format!(
                    "{file}:{}: names {what} ({})",
                    named.line, rule.reason
                ));
            }
        }
    }
    out
}

fn forbids(f: Names, path: &[String]) -> bool {
    let starts = |p: &str| {
        let want: Vec<&str> = p.split("::").collect();
        path.len() >= want.len() && path.iter().zip(&want).all(|(a, b)| a == b)
    };
    match f {
        Prefix(p) => starts(p),
        Anywhere(p) => {
            let want: Vec<&str> = p.split("::").collect();
            path.windows(want.len())
                .any(|w| w.iter().zip(&want).all(|(a, b)| a == b))
        }
        CrateOutside(module) => {
            path.first().is_some_and(|s| s == "crate") && path.get(1).is_some_and(|s| s != module)
        }
    }
}

/// A path a file names: as written (use trees expanded) and resolved against
/// the file's module when it starts with `self` or `super`.
struct Named {
    line: usize,
    written: Vec<String>,
    resolved: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

/// Splits source text into the tokens paths are made of, with their lines;
/// comments, string, byte-string, raw-string and char literals produce none.
fn tokens(source: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Advances over c[i..j], counting the lines it spans.
    let skip_to = |i: &mut usize, j: usize, line: &mut usize| {
        *line += c[*i..j.min(c.len())]
            .iter()
            .filter(|&&ch| ch == '\n')
            .count();
        *i = j.min(c.len());
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            let end = (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len());
            i = end;
        } else if ch == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            skip_to(&mut i, j, &mut line);
        } else if let Some(j) = raw_string_end(&c, i) {
            skip_to(&mut i, j, &mut line);
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            let mut j = if ch == 'b' { i + 2 } else { i + 1 };
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            skip_to(&mut i, j + 1, &mut line);
        } else if ch == '\'' || (ch == 'b' && next == Some('\'')) {
            let q = if ch == 'b' { i + 1 } else { i };
            if c.get(q + 1) == Some(&'\\') {
                // Skip the escaped character: it may be the quote itself ('\'').
                let mut j = q + 3;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if c.get(q + 2) == Some(&'\'') {
                i = q + 3;
            } else {
                // A lifetime or label ('a, 'static): not a literal.
                out.push((line, Tok::Other));
                i = q + 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let mut j = i;
            // Raw identifiers (r#match) name the same thing as the plain one.
            if ch == 'r' && next == Some('#') && c.get(i + 2).is_some_and(|x| x.is_alphabetic()) {
                j += 2;
                i += 2;
            }
            while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
                j += 1;
            }
            out.push((line, Tok::Ident(c[i..j].iter().collect())));
            i = j;
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
            out.push((line, Tok::Other));
        } else {
            let t = match ch {
                ':' if next == Some(':') => {
                    i += 1;
                    Tok::PathSep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '*' => Tok::Star,
                _ => Tok::Other,
            };
            out.push((line, t));
            i += 1;
        }
    }
    out
}

/// If a raw (byte) string starts at `i` (`r"…"`, `r#"…"#`, `br##"…"##`), the
/// index just past its end.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&x| x == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&x| x == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// The module path of a file: `src/stats/mod.rs` → `crate::stats`,
/// `src/stats/evidence.rs` → `crate::stats::evidence`.
fn module_of(file: &str) -> Vec<String> {
    let mut m = vec!["crate".to_string()];
    let rel = file.strip_prefix("src/").unwrap_or(file);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let parts: Vec<&str> = rel.split('/').collect();
    for (k, p) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        if !(last && matches!(*p, "mod" | "lib" | "main")) {
            m.push(p.to_string());
        }
    }
    m
}

/// `self::x` and `super::x` against `module`; other paths unchanged.
fn resolve(module: &[String], path: &[String]) -> Vec<String> {
    let mut base = module.to_vec();
    let mut k = 0;
    match path.first().map(String::as_str) {
        Some("self") => k = 1,
        Some("super") => {
            while path.get(k).is_some_and(|s| s == "super") {
                if base.len() <= 1 {
                    return path.to_vec();
                }
                base.pop();
                k += 1;
            }
        }
        _ => return path.to_vec(),
    }
    base.extend(path[k..].iter().cloned());
    base
}

/// Every path `source` names: each leaf of each `use` tree, and every
/// `a::b` path in code (a single identifier names nothing outside its scope).
fn names(file: &str, source: &str) -> Vec<Named> {
    let toks = tokens(source);
    let file_module = module_of(file);
    // Inline `mod x {` blocks: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |i: usize| match toks.get(i) {
        Some((_, Tok::Ident(s))) => Some(s.as_str()),
        _ => None,
    };
    while i < toks.len() {
        let module: Vec<String> = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        match &toks[i].1 {
            Tok::Open => {
                depth += 1;
                i += 1;
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(name), Some((_, Tok::Open))) = (ident(i + 1), toks.get(i + 2)) {
                    inline.push((name.to_string(), depth + 1));
                }
                i += 1;
            }
            Tok::Ident(kw) if kw == "use" => {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut i, Vec::new(), &mut leaves);
                for (line, written) in leaves {
                    let resolved = resolve(&module, &written);
                    out.push(Named {
                        line,
                        written,
                        resolved,
                    });
                }
            }
            Tok::Ident(_) | Tok::PathSep => {
                let line = toks[i].0;
                let mut path = Vec::new();
                if toks[i].1 == Tok::PathSep {
                    i += 1;
                }
                while let Some(s) = ident(i) {
                    path.push(s.to_string());
                    i += 1;
                    if toks.get(i).map(|t| &t.1) == Some(&Tok::PathSep) && ident(i + 1).is_some() {
                        i += 1;
                    } else {
                        break;
                    }
                }
                // An empty path is a lone `::` (as in `Vec::<u8>::new`), already passed.
                if path.len() > 1 {
                    let resolved = resolve(&module, &path);
                    out.push(Named {
                        line,
                        written: path,
                        resolved,
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Expands one use tree starting at `toks[*i]` into its leaves (full paths),
/// each with the line of its last segment; stops after the tree.
fn use_tree(
    toks: &[(usize, Tok)],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(usize, Vec<String>)>,
) {
    let mut path = prefix;
    let mut line = toks.get(*i).map_or(0, |t| t.0);
    while let Some((l, t)) = toks.get(*i) {
        match t {
            Tok::PathSep => *i += 1,
            Tok::Ident(s) => {
                line = *l;
                path.push(s.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.1) == Some(&Tok::PathSep) {
                    continue;
                }
                if matches!(toks.get(*i), Some((_, Tok::Ident(a))) if a == "as") {
                    *i += 2;
                }
                break;
            }
            Tok::Star => {
                *i += 1;
                break;
            }
            Tok::Open => {
                *i += 1;
                while let Some((_, t)) = toks.get(*i) {
                    match t {
                        Tok::Close => {
                            *i += 1;
                            break;
                        }
                        Tok::Comma => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(toks, i, path.clone(), out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => break,
        }
    }
    // `use a::b::{self, c}` names `a::b` itself.
    if path.last().is_some_and(|s| s == "self") && path.len() > 1 {
        path.pop();
    }
    if !path.is_empty() {
        out.push((line, path));
    }
}

// The scanner's own tests: each bad import below must be caught, and the same
// text inside comments and strings must not, so the rule test can fail.

fn stats_violations(source: &str) -> Vec<String> {
    check("src/stats/fake.rs", source, RULES)
}

#[test]
fn scanner_catches_a_store_import_in_stats() {
    let v = stats_violations("//! fine\n\nuse crate::store::SqliteStore;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with(
            "src/stats/fake.rs:3: names crate::store::SqliteStore (stats is the lowest layer"
        ),
        "{v:?}"
    );
}

#[test]
fn scanner_catches_tokio_and_clocks_in_code() {
    let v =
        stats_violations("fn f() {\n    tokio::spawn(async {});\n    let t = Instant::now();\n}\n");
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].starts_with("src/stats/fake.rs:2: names tokio::spawn (stats is pure"),
        "{v:?}"
    );
    assert!(
        v[1].starts_with("src/stats/fake.rs:3: names Instant::now (stats has no clock"),
        "{v:?}"
    );
}

#[test]
fn scanner_expands_use_trees_and_aliases() {
    let v = stats_violations(
        "use std::{\n    collections::BTreeMap,\n    fs,\n    time::{Duration, Instant as Clock},\n};\nuse rand::Rng as _;\n",
    );
    let got: Vec<&str> = v.iter().map(|s| s.split(" (").next().unwrap()).collect();
    assert_eq!(
        got,
        [
            "src/stats/fake.rs:3: names std::fs",
            "src/stats/fake.rs:4: names std::time::Instant",
            "src/stats/fake.rs:6: names rand::Rng",
        ]
    );
}

#[test]
fn scanner_resolves_super_against_the_module() {
    // From src/stats/fake.rs, super:: is stats (fine) and super::super:: the crate.
    assert!(stats_violations("use super::mixture::Scale;\nuse self::inner::X;\n").is_empty());
    let v = stats_violations("use super::super::store::Weights;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("names super::super::store::Weights (= crate::store::Weights)"),
        "{v:?}"
    );
    // Inside an inline `mod tests { }` one more `super` is needed to leave stats.
    let inline = "mod tests {\n    use super::super::Policy;\n}\nuse super::Policy;\n";
    assert!(stats_violations(inline).is_empty());
    let v = stats_violations("mod tests {\n    use super::super::super::clock;\n}\n");
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn scanner_ignores_comments_strings_and_chars() {
    let text = r####"
// use crate::store::SqliteStore;
/// Unlike crate::store, this is pure.
/* tokio::spawn( /* nested */ std::fs::read */
const A: &str = "crate::store::SqliteStore";
const B: &str = r#"tokio::spawn(" crate::control "#;
const C: &[u8] = b"std::net";
const D: char = '"';
const E: [char; 3] = ['\'', '\\', '\u{22}'];
fn f<'a>(x: &'a str) -> &'a str { x }
"####;
    assert_eq!(stats_violations(text), Vec::<String>::new());
    // Lines stay right after multi-line comments and strings.
    let after = format!("{text}use crate::store;\n");
    let v = stats_violations(&after);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("src/stats/fake.rs:11: names crate::store "),
        "{v:?}"
    );
}

#[test]
fn scanner_applies_rules_by_scope_and_segment() {
    let proxy = "use crate::control::ControlPlane;\nuse crate::controller;\nuse crate::routing::RoutingTable;\nuse crate::stores::X;\n";
    let v = check("src/proxy/handler.rs", proxy, RULES);
    let got: Vec<&str> = v.iter().map(|s| s.split(" (").next().unwrap()).collect();
    assert_eq!(
        got,
        [
            "src/proxy/handler.rs:1: names crate::control::ControlPlane",
            "src/proxy/handler.rs:2: names crate::controller",
        ]
    );
    // Outside every scope nothing is forbidden.
    assert!(check("src/server.rs", proxy, RULES).is_empty());
    // A scope is a folder, not a name prefix.
    assert!(check("src/statsx/a.rs", "use crate::store;", RULES).is_empty());
    // The layering of the decision rule.
    let v = check(
        "src/stats/evidence.rs",
        "use super::decide::Verdict;\n",
        RULES,
    );
    assert_eq!(v.len(), 1, "{v:?}");
}
