//! How client commands print: aligned tables for people (`-o table`, the default, and
//! `-o wide` with more columns), the API's JSON or YAML for scripts (`-o json|yaml`).

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::Value;

/// An output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// The API's JSON, pretty-printed (one object per line when following).
    Json,
    /// The API's answer as YAML (documents separated by `---` when following).
    Yaml,
}

/// `-o`/`--output`.
#[derive(Clone, Copy, Debug, Args)]
pub struct OutputArgs {
    /// Output format: table, wide, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One column of a table: its header, whether only `-o wide` shows it, and its cell.
pub struct Column {
    pub header: &'static str,
    pub wide: bool,
    pub cell: fn(&Value) -> String,
}

/// A column shown in both table formats.
pub const fn col(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column {
        header,
        wide: false,
        cell,
    }
}

/// A column only `-o wide` shows.
pub const fn wide(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column {
        header,
        wide: true,
        cell,
    }
}

/// Prints `value` (the API's answer) as `format`; a table has one row per element of `rows`.
pub fn print_value(
    value: &Value,
    rows: &[Value],
    columns: &[Column],
    format: Format,
) -> Result<()> {
    match format {
        Format::Json => out(&format!("{}\n", serde_json::to_string_pretty(value)?)),
        Format::Yaml => out(&serde_yaml_ng::to_string(value)?),
        Format::Table | Format::Wide => out(&table(rows, columns, format == Format::Wide)),
    }
}

/// Prints a list answer: one table row per element.
pub fn print_list(value: &Value, columns: &[Column], format: Format) -> Result<()> {
    let rows = value.as_array().map(Vec::as_slice).unwrap_or_default();
    print_value(value, rows, columns, format)
}

/// The columns `wide` selects.
pub fn shown(columns: &[Column], wide: bool) -> impl Iterator<Item = &Column> {
    columns.iter().filter(move |c| wide || !c.wide)
}

/// `rows` as a table: a header line, then a line per row, each column as wide as its widest
/// cell plus three spaces, the last unpadded (as kubectl prints).
pub fn table(rows: &[Value], columns: &[Column], wide: bool) -> String {
    let columns: Vec<&Column> = shown(columns, wide).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| one_line((c.cell)(r))).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.header.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    let mut text = line(&headers, &widths);
    for row in &cells {
        text.push_str(&line(row, &widths));
    }
    text
}

/// One table line of `cells` padded to `widths`.
pub fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        s.push_str(cell);
        if i + 1 < cells.len() {
            let pad = w.saturating_sub(cell.chars().count()) + 3;
            s.extend(std::iter::repeat_n(' ', pad));
        }
    }
    s.truncate(s.trim_end().len());
    s.push('\n');
    s
}

/// Writes `text` to standard output. A closed pipe (`| head`) ends the command quietly.
pub fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// `cell` with its whitespace runs (newlines included) folded to one space.
pub fn one_line(cell: String) -> String {
    if cell.contains(char::is_whitespace) {
        cell.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        cell
    }
}

/// `s` cut to `max` characters, ending in `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max.saturating_sub(1)).chain(['…']).collect()
    }
}

/// The string or number at `key`, or `-` when absent or null.
pub fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The number of elements of the array at `key`.
pub fn count(v: &Value, key: &str) -> String {
    v[key].as_array().map_or(0, Vec::len).to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long ago the epoch-milliseconds at `key` were (`45s`, `12m`, `3h`, `2d`), or how long
/// until (`in 14m`); `-` when absent.
pub fn age(v: &Value, key: &str) -> String {
    match v[key].as_i64() {
        None => "-".into(),
        Some(ms) => {
            let delta = now_ms() - ms;
            if delta >= 0 {
                span(delta)
            } else {
                format!("in {}", span(-delta))
            }
        }
    }
}

/// A span of milliseconds, in its largest sensible unit.
pub fn span(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let t = sluice_client::Utc::from_epoch_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_on_the_widest_cell_and_wide_adds_columns() {
        let cols = [
            col("NAME", |v| text(v, "name")),
            col("USERS", |v| text(v, "users")),
            wide("NOTE", |v| text(v, "note")),
        ];
        let rows = [
            json!({"name": "app", "users": ["a", "b"], "note": "x"}),
            json!({"name": "warehouse", "users": [], "note": "two\nlines"}),
        ];
        assert_eq!(
            table(&rows, &cols, false),
            "NAME        USERS\napp         a,b\nwarehouse   -\n"
        );
        assert_eq!(
            table(&rows, &cols, true),
            "NAME        USERS   NOTE\napp         a,b     x\nwarehouse   -       two lines\n"
        );
    }

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_316_561_000), "2026-12-03 16:49:21");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(span(45_000), "45s");
        assert_eq!(span(15 * 60_000), "15m");
        assert_eq!(span(5 * 3_600_000), "5h");
        assert_eq!(span(3 * 86_400_000), "3d");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
