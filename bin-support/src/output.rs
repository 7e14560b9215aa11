//! Command output: tables for people, JSON for scripts (`-o table|json`).

use std::fmt::Write as _;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Left-aligned columns separated by two spaces; the first row is the header.
/// Empty cells print as `-`.
pub fn render_table<R, C>(rows: R) -> String
where
    R: IntoIterator<Item = C>,
    C: IntoIterator,
    C::Item: Into<String>,
{
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|cell| {
                    let cell: String = cell.into();
                    if cell.is_empty() {
                        "-".to_string()
                    } else {
                        cell
                    }
                })
                .collect()
        })
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_marks_empty_cells() {
        let table = render_table([vec!["NAME", "STATE"], vec!["leaf1", ""], vec!["l2", "up"]]);
        assert_eq!(table, "NAME   STATE\nleaf1  -\nl2     up\n");
    }
}
