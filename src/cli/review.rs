//! `sluice review ...`: list, show, approve and deny the statements held for human approval.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;
use sluice_client::wire::review::{Review, ReviewStatus};

use super::api::{urlencode, Api, ClientArgs};
use super::get::REVIEWS;
use super::output::{self, out, print_list, print_value, Format, OutputArgs};

/// `sluice review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Reviews, newest first (pending ones by default).
    List {
        /// pending, approved, denied, expired, used, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Same as `-o json`.
        #[arg(long, hide = true)]
        json: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One review in full: statement, rule, decisions.
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve as the token's name (never one's own request). Single-use unless --window.
    Approve {
        id: String,
        /// Let the approval be used repeatedly for this long (e.g. 30m, 1h).
        #[arg(long)]
        window: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny; the statement does not run.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `sluice review ...`.
pub fn run(cmd: ReviewCommand) -> Result<()> {
    match cmd {
        ReviewCommand::List {
            status,
            json,
            output,
            client,
        } => {
            let q = match status.as_str() {
                "all" => String::new(),
                s if ReviewStatus::parse(s).is_some() => format!("?status={s}"),
                s => bail!(
                    "--status must be pending, approved, denied, expired, used or all, not `{s}`"
                ),
            };
            let answer = Api::new(client)?.get(&format!("/v1/reviews{q}"))?;
            let format = if json { Format::Json } else { output.output };
            print_list(&serde_json::from_str(&answer)?, REVIEWS, format)
        }
        ReviewCommand::Show { id, output, client } => {
            let answer = Api::new(client)?.get(&format!("/v1/reviews/{}", urlencode(&id)))?;
            let v: Value = serde_json::from_str(&answer)?;
            match output.output {
                Format::Table | Format::Wide => out(&describe(&serde_json::from_value(v)?)),
                f => print_value(&v, &[], REVIEWS, f),
            }
        }
        ReviewCommand::Approve {
            id,
            window,
            comment,
            output,
            client,
        } => {
            let window_s = window
                .map(|w| sluice_controlplane::document::parse_duration(&w).map(|d| d.as_secs()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            let body = serde_json::json!({"comment": comment, "window_s": window_s});
            decide(client, &id, "approve", &body, output.output)
        }
        ReviewCommand::Deny {
            id,
            comment,
            output,
            client,
        } => decide(
            client,
            &id,
            "deny",
            &serde_json::json!({"comment": comment}),
            output.output,
        ),
    }
}

/// Approves or denies review `id`; prints where it stands now.
fn decide(client: ClientArgs, id: &str, verb: &str, body: &Value, format: Format) -> Result<()> {
    let answer =
        Api::new(client)?.post_json(&format!("/v1/reviews/{}/{verb}", urlencode(id)), body)?;
    let v: Value = serde_json::from_str(&answer)?;
    if !matches!(format, Format::Table | Format::Wide) {
        return print_value(&v, &[], REVIEWS, format);
    }
    let r: Review = serde_json::from_value(v)?;
    out(&format!("{}\n", standing(&r)))
}

/// One sentence on where a review stands.
fn standing(r: &Review) -> String {
    match r.status {
        ReviewStatus::Pending => format!(
            "review {}: pending, {} of {} approvals ({})",
            r.id,
            r.approvers.len(),
            r.min_approvers,
            r.approvers.join(", ")
        ),
        ReviewStatus::Approved => format!(
            "review {}: approved by {}, {}",
            r.id,
            r.approvers.join(", "),
            if r.reusable {
                "usable repeatedly until its window ends"
            } else {
                "usable once"
            }
        ),
        s => format!("review {}: {s}", r.id),
    }
}

/// A review in full, a field per line (as `kubectl describe`).
fn describe(r: &Review) -> String {
    let when = |ms: i64| format!("{} UTC", output::utc(ms));
    let mut fields = vec![
        ("ID", r.id.clone()),
        ("Status", r.status.as_str().to_owned()),
        ("Identity", r.identity.clone()),
        ("Connection", r.connection.clone()),
        ("Role", r.role.clone()),
        ("Rule", r.rule_id.clone()),
        ("Statement", output::one_line(r.statement.clone())),
        (
            "Approvals",
            format!("{}/{}", r.approvers.len(), r.min_approvers),
        ),
        ("Node", r.node_id.clone()),
        ("Created", when(r.created_at)),
        ("Expires", when(r.expires_at)),
    ];
    if let Some(m) = &r.message {
        fields.push(("Message", m.clone()));
    }
    if let Some(u) = r.use_until {
        fields.push(("Usable until", when(u)));
    }
    let mut text: String = fields
        .iter()
        .map(|(k, v)| format!("{:<13} {v}\n", format!("{k}:")))
        .collect();
    if !r.decisions.is_empty() {
        text.push_str("Decisions:\n");
        for d in &r.decisions {
            let comment = d
                .comment
                .as_deref()
                .map(|c| format!("  {c}"))
                .unwrap_or_default();
            text.push_str(&format!(
                "  {}  {:<8}  {}{comment}\n",
                when(d.at),
                d.decision.as_str(),
                d.approver
            ));
        }
    }
    text
}
