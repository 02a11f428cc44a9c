//! `sluice audit tail`: the latest audit records, then (with `-f`) the new ones as they are
//! stored, polling `GET /v1/audit?after=` once a second until Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::api::{urlencode, Api, ClientArgs};
use super::output::{self, col, out, shown, text, wide, Column, Format, OutputArgs};

/// `sluice audit tail` options.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    identity: Option<String>,
    #[arg(long)]
    connection: Option<String>,
    /// allow, deny, review, error...
    #[arg(long)]
    verdict: Option<String>,
    /// How many past records to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: u32,
    /// Keep printing new records as they arrive, until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    client: ClientArgs,
}

/// How often a follow asks for new records.
const POLL: Duration = Duration::from_secs(1);

/// Most records asked for per poll.
const PAGE: u32 = 1000;

/// The columns of an audit record (flattened beside its `id`).
const RECORDS: &[Column] = &[
    col("TIME", |v| {
        v["time_ms"]
            .as_i64()
            .map_or_else(|| "-".into(), output::utc)
    }),
    col("IDENTITY", |v| text(v, "identity")),
    col("CONNECTION", |v| text(v, "connection")),
    col("VERDICT", |v| text(v, "verdict")),
    col("RULE", |v| text(v, "rule_id")),
    col("ROWS", |v| text(v, "rows")),
    col("MS", |v| {
        v["duration_us"]
            .as_i64()
            .map_or_else(|| "-".into(), |us| format!("{:.1}", us as f64 / 1000.0))
    }),
    col("STATEMENT", |v| {
        output::cut(&output::one_line(text(v, "statement")), 80)
    }),
    wide("ID", |v| text(v, "id")),
    wide("SESSION", |v| text(v, "session_id")),
    wide("REVIEW", |v| text(v, "review_id")),
    wide("APPROVERS", |v| text(v, "approvers")),
    wide("MASKED", |v| text(v, "masked_columns")),
    wide("ERROR", |v| text(v, "error")),
];

/// Prints records as they come, keeping the column widths of the first page (so a follow's
/// lines stay aligned under its header).
struct Printer {
    format: Format,
    widths: Option<Vec<usize>>,
}

impl Printer {
    fn print(&mut self, records: &[Value]) -> Result<()> {
        match self.format {
            Format::Json => records
                .iter()
                .try_for_each(|r| out(&format!("{}\n", serde_json::to_string(r)?))),
            Format::Yaml => records
                .iter()
                .try_for_each(|r| out(&format!("---\n{}", serde_yaml_ng::to_string(r)?))),
            Format::Table | Format::Wide => self.table(records),
        }
    }

    fn table(&mut self, records: &[Value]) -> Result<()> {
        let wide = self.format == Format::Wide;
        let columns: Vec<&Column> = shown(RECORDS, wide).collect();
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                columns
                    .iter()
                    .map(|c| output::one_line((c.cell)(r)))
                    .collect()
            })
            .collect();
        let mut text = String::new();
        let widths = match &self.widths {
            Some(w) => w.clone(),
            None => {
                let mut w: Vec<usize> = columns.iter().map(|c| c.header.len()).collect();
                for row in &rows {
                    for (w, cell) in w.iter_mut().zip(row) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
                let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
                text.push_str(&output::line(&headers, &w));
                self.widths = Some(w.clone());
                w
            }
        };
        for row in &rows {
            text.push_str(&output::line(row, &widths));
        }
        out(&text)
    }
}

/// Runs `sluice audit tail`.
pub fn tail(args: TailArgs) -> Result<()> {
    let api = Api::new(args.client)?;
    let mut filters = String::new();
    for (k, v) in [
        ("identity", args.identity),
        ("connection", args.connection),
        ("verdict", args.verdict),
    ] {
        if let Some(v) = v {
            filters.push_str(&format!("&{k}={}", urlencode(&v)));
        }
    }
    let mut printer = Printer {
        format: args.output.output,
        widths: None,
    };
    let latest = records(
        &api,
        &format!("/v1/audit?limit={}{filters}", args.lines.max(1)),
    )?;
    let mut last = latest.first().and_then(|r| r["id"].as_i64()).unwrap_or(0);
    let oldest_first: Vec<Value> = latest.into_iter().rev().collect();
    printer.print(&oldest_first)?;
    if !args.follow {
        return Ok(());
    }
    let stop = interrupted()?;
    while !stop.load(Ordering::Relaxed) {
        let page = records(
            &api,
            &format!("/v1/audit?after={last}&limit={PAGE}{filters}"),
        )?;
        if let Some(id) = page.last().and_then(|r| r["id"].as_i64()) {
            last = id;
        }
        printer.print(&page)?;
        if page.len() < PAGE as usize {
            sleep_unless(&stop, POLL);
        }
    }
    Ok(())
}

/// The `records` of an audit page.
fn records(api: &Api, path: &str) -> Result<Vec<Value>> {
    let mut page: Value = serde_json::from_str(&api.get(path)?)?;
    Ok(match page["records"].take() {
        Value::Array(a) => a,
        _ => Vec::new(),
    })
}

/// A flag Ctrl-C (or SIGTERM) sets, so a follow ends between two polls and exits 0.
fn interrupted() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))?;
    Ok(stop)
}

/// Sleeps for `d`, waking early when `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}
