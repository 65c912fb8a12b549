//! The project's documents are where the code says they are: every `docs/…` path cited in the
//! sources, tests, benches, fuzz targets, driver scripts, README and the documents themselves
//! exists in the repository (and every `§n` cited with it is a section there), and the vectors
//! the documents show are the ones the tests replay.

mod common;

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under `dir` (recursively), skipping build output and version control.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                files(&p, out);
            }
        } else if std::fs::read_to_string(&p).is_ok() {
            out.push(p);
        }
    }
}

/// A citation of a project document: the path after `docs/` (or the file name, for a link
/// between documents), and the section cited right after it (`§3.8` → `3.8`), if any.
#[derive(Debug, PartialEq)]
struct Cite {
    doc: String,
    section: Option<String>,
    /// Where the document is cited from.
    outside: bool,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The section number cited right after position `at` of `text` (` §5`, `) §4`, ` (§3.2)`).
fn section_after(text: &str, at: usize) -> Option<String> {
    let rest = &text[at..];
    let rest = rest.trim_start_matches([')', ']', '`', '*']);
    let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let num = rest.strip_prefix('§')?;
    let n: String = num
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let n = n.trim_end_matches('.').to_string();
    (!n.is_empty()).then_some(n)
}

/// Citations of `docs/…` in `text`.
fn cites(text: &str) -> Vec<Cite> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("docs/") {
        let start = from + i;
        from = start + 5;
        // `…/docs/` of another tree (e.g. the shared references) is not the project's.
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            continue;
        }
        let outside = before == Some('/');
        let len = text[from..]
            .find(|c: char| !is_path_char(c))
            .unwrap_or(text.len() - from);
        let doc = text[from..from + len]
            .trim_end_matches(['.', '/'])
            .to_string();
        if doc.is_empty() {
            continue;
        }
        out.push(Cite {
            section: section_after(text, from + len),
            doc,
            outside,
        });
    }
    out
}

/// Links between documents, `[…](name.md)`, and the section cited after them.
fn links(text: &str) -> Vec<Cite> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("](") {
        let start = from + i + 2;
        from = start;
        let Some(len) = text[start..].find(')') else {
            break;
        };
        let target = &text[start..start + len];
        if target.contains("://") || target.starts_with('#') || !target.ends_with(".md") {
            continue;
        }
        out.push(Cite {
            doc: target.to_string(),
            section: section_after(text, start + len),
            outside: false,
        });
    }
    out
}

/// Whether `doc` has a heading numbered `n` (`## 3.` for `3`, `### 3.8` for `3.8`).
fn has_section(doc: &str, n: &str) -> bool {
    doc.lines().any(|l| {
        let h = l.trim_start_matches('#');
        h.len() < l.len()
            && h.trim_start()
                .strip_prefix(n)
                .is_some_and(|r| r.starts_with(['.', ' ']) || r.is_empty())
    })
}

#[test]
fn the_citation_reader_finds_what_it_should() {
    let d = "docs";
    let text = format!(
        "see {d}/rspro.md §5, ({d}/t0-and-sim.md) §3.8 and `{d}/panel.png`; {d}/gsmtap.md. \
         not ../shared/{d}/x.md nor my{d}/y.md"
    );
    let got = cites(&text);
    let want = |doc: &str, section: Option<&str>, outside: bool| Cite {
        doc: doc.into(),
        section: section.map(Into::into),
        outside,
    };
    assert_eq!(
        got,
        [
            want("rspro.md", Some("5"), false),
            want("t0-and-sim.md", Some("3.8"), false),
            want("panel.png", None, false),
            want("gsmtap.md", None, false),
            want("x.md", None, true),
        ]
    );
    assert_eq!(
        links("as [a](pool-protocol.md) §6 says, [b](https://x/y.md), [c](#z)"),
        [want("pool-protocol.md", Some("6"), false)]
    );
    assert!(has_section(
        "# T\n## 3. Terminal\n### 3.8 Edge cases\n",
        "3.8"
    ));
    assert!(has_section("## 3. Terminal\n", "3"));
    assert!(!has_section("## 3. Terminal\n### 3.8 Edge\n", "3.9"));
    assert!(!has_section("## 13. Other\n", "3"));
}

#[test]
fn every_cited_document_exists_with_its_section() {
    let root = repo();
    let mut paths = Vec::new();
    for dir in ["src", "tests", "benches", "fuzz", "driver", "docs"] {
        files(&root.join(dir), &mut paths);
    }
    paths.push(root.join("README.md"));
    paths.push(root.join("Cargo.toml"));
    let mut problems = Vec::new();
    let mut seen = 0;
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let in_docs = rel.starts_with("docs/");
        let mut all = cites(&text);
        if in_docs || rel.ends_with(".md") {
            all.extend(links(&text).into_iter().map(|mut c| {
                // A link in README.md is relative to the root, in docs/ to docs/.
                if !in_docs {
                    c.doc = c.doc.trim_start_matches("docs/").to_string();
                }
                c
            }));
        }
        for c in all {
            seen += 1;
            // A path into another tree's docs folder is fine where the project has the same file
            // (an install path such as the package's copy of the panel picture); else it leads
            // away from the repository.
            if c.outside && !root.join("docs").join(&c.doc).exists() {
                problems.push(format!(
                    "{rel}: cites …/docs/{} outside the repository",
                    c.doc
                ));
                continue;
            }
            let target = root.join("docs").join(&c.doc);
            if !target.exists() {
                problems.push(format!("{rel}: docs/{} does not exist", c.doc));
                continue;
            }
            if let Some(n) = &c.section {
                let doc = std::fs::read_to_string(&target).unwrap_or_default();
                if !has_section(&doc, n) {
                    problems.push(format!("{rel}: docs/{} has no §{n}", c.doc));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The code does cite its documents (a reader that found nothing would pass vacuously).
    assert!(seen >= 10, "only {seen} citations found");
}

/// Hex strings between backticks in `text`, spaces removed, upper case.
fn backticked_hex(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.replace(' ', "").to_uppercase())
        .filter(|s| s.len() >= 8 && s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

#[test]
fn the_pool_document_shows_the_manuals_vectors() {
    let doc = std::fs::read_to_string(repo().join("docs/pool-protocol.md")).unwrap();
    // A row may show a frame the vectors leave out, saying so.
    let doc: String = doc
        .lines()
        .filter(|l| !l.contains("not in `manual.txt`"))
        .collect::<Vec<_>>()
        .join("\n");
    let shown = backticked_hex(&doc);
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    for case in common::manual_cases() {
        for step in case.steps {
            requests.push(common::upper(&step.request));
            if let Some(r) = step.reply {
                replies.push(common::upper(&r));
            }
        }
    }
    // Every frame of manual.txt is in the document …
    for f in requests.iter().chain(&replies) {
        assert!(shown.contains(f), "docs/pool-protocol.md lacks {f}");
    }
    // … and every whole frame the document shows is one of manual.txt's.
    for s in &shown {
        let b = common::hex(s);
        let whole = match &b[..2] {
            [0xAA, 0x66] => b.len() >= 4 && b.len() == 4 + usize::from(b[3]),
            [0xAA, 0x55] | [0xAA, 0x44] => {
                b.len() >= 5 && b.len() == 5 + usize::from(u16::from_be_bytes([b[3], b[4]]))
            }
            _ => false,
        };
        if whole {
            assert!(
                requests.contains(s) || replies.contains(s),
                "docs/pool-protocol.md shows {s}, which tests/vectors/manual.txt has not"
            );
        }
    }
}

#[test]
fn the_rspro_document_shows_the_captured_frames() {
    let doc = std::fs::read_to_string(repo().join("docs/rspro.md")).unwrap();
    let block = doc
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/rspro.md §4 shows the frames in a ```text block");
    let shown = common::remsim::sections(block);
    let captured = common::remsim::captured();
    assert_eq!(
        shown, captured,
        "docs/rspro.md and tests/vectors/rspro-1.0.0.txt differ"
    );
}
