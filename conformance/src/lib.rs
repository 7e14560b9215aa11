//! Record-and-replay conformance for metalmesh's I/O-free cores.
//!
//! A case is a folder with `input.jsonl` (timed inputs, one per line) and
//! `expected.jsonl` (the core's output for each input line, one per line).
//! A test replays each case's inputs through a fresh core and hands the
//! outputs to [`check`], which compares them as JSON values. After an
//! intended change of behaviour, running the test with
//! `METALMESH_CONFORMANCE_REWRITE=1` writes the new outputs as the expected
//! files instead; review their diff before committing it.

use std::path::{Path, PathBuf};

/// Set to rewrite every case's `expected.jsonl` from what the core does now.
pub const REWRITE: &str = "METALMESH_CONFORMANCE_REWRITE";

/// The cases under `root` (folders holding an `input.jsonl`), sorted.
///
/// # Panics
/// When `root` cannot be read or holds fewer than `at_least` cases: a
/// conformance suite that silently lost its cases would pass.
pub fn cases(root: &Path, at_least: usize) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("conformance cases {}: {e}", root.display()));
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.jsonl").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= at_least,
        "{} conformance case(s) under {}, at least {at_least} expected",
        cases.len(),
        root.display()
    );
    cases
}

/// The non-empty lines of a case file.
///
/// # Panics
/// When the file cannot be read.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Where `got` (outputs as JSON text) departs from `expected`: `None` when
/// they are equal as JSON values line by line.
pub fn compare(got: &[String], expected: &[String]) -> Option<String> {
    if got.len() != expected.len() {
        return Some(format!(
            "{} outputs, {} expected",
            got.len(),
            expected.len()
        ));
    }
    for (index, (got, want)) in got.iter().zip(expected).enumerate() {
        let parse = |text: &str, what: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|e| serde_json::Value::String(format!("unreadable {what}: {e}")))
        };
        let (got, want) = (parse(got, "output"), parse(want, "expected line"));
        if got != want {
            return Some(format!(
                "line {}:\n  expected {want}\n  got      {got}",
                index + 1
            ));
        }
    }
    None
}

/// Replays every case and compares (or, with [`REWRITE`] set, rewrites)
/// its expected outputs.
///
/// # Panics
/// When any case differs, naming each case and its first differing line.
pub fn check(cases: &[PathBuf], replay: impl Fn(&Path) -> Vec<String>) {
    let rewrite = std::env::var_os(REWRITE).is_some();
    let mut failures = Vec::new();
    for case in cases {
        let got = replay(case);
        let expected_path = case.join("expected.jsonl");
        if rewrite {
            std::fs::write(&expected_path, got.join("\n") + "\n")
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
            continue;
        }
        let expected = if expected_path.is_file() {
            lines(&expected_path)
        } else {
            Vec::new()
        };
        if let Some(difference) = compare(&got, &expected) {
            failures.push(format!("{}: {difference}", case.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "outputs differ (after an intended change: {REWRITE}=1):\n{}",
        failures.join("\n")
    );
}

/// Shows that [`check`] can fail: the first case replays to its expected
/// outputs, and with its last expected line replaced (by the first of
/// `replacements` that differs from what the core produced) it no longer
/// does.
///
/// # Panics
/// When the case does not replay, or the replaced line goes unnoticed.
pub fn assert_a_changed_line_is_caught(
    cases: &[PathBuf],
    replay: impl Fn(&Path) -> Vec<String>,
    replacements: &[&str],
) {
    let Some(case) = cases.first() else {
        panic!("no conformance case");
    };
    let got = replay(case);
    let mut expected = lines(&case.join("expected.jsonl"));
    assert_eq!(compare(&got, &expected), None, "the recorded case replays");
    let last = expected.len() - 1;
    let replacement = replacements
        .iter()
        .find(|r| compare(&got[last..], &[r.to_string()]).is_some())
        .unwrap_or_else(|| panic!("no replacement differs from the last output"));
    expected[last] = replacement.to_string();
    assert!(
        compare(&got, &expected).is_some(),
        "a changed line went unnoticed"
    );
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn equal_json_with_other_spacing_matches() {
        let got = vec![r#"{"a":1,"b":[2]}"#.to_string()];
        let want = vec![r#"{ "b": [2], "a": 1 }"#.to_string()];
        assert_eq!(compare(&got, &want), None);
    }

    #[test]
    fn a_changed_value_or_count_is_named() {
        let got = vec![r#"{"a":1}"#.to_string(), r#"{"a":2}"#.to_string()];
        let want = vec![r#"{"a":1}"#.to_string(), r#"{"a":3}"#.to_string()];
        assert!(compare(&got, &want).is_some_and(|d| d.starts_with("line 2")));
        assert!(compare(&got, &want[..1]).is_some_and(|d| d.contains("2 outputs, 1 expected")));
    }
}
