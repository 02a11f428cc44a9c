//! `sluice review ...`: list, show, approve and deny the statements held for human approval.

use anyhow::{bail, Result};
use clap::Subcommand;
use sluice_client::wire::review::{Review, ReviewStatus};

use super::api::{urlencode, Api, ClientArgs};

/// `sluice review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Reviews, newest first (pending ones by default).
    List {
        /// pending, approved, denied, expired, used, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One review in full: statement, rule, decisions.
    Show {
        id: String,
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
        client: ClientArgs,
    },
    /// Deny; the statement does not run.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `sluice review ...`.
pub fn run(cmd: ReviewCommand) -> Result<()> {
    let decide = |client: ClientArgs, id: &str, verb: &str, body: serde_json::Value| {
        let out =
            Api::new(client)?.post_json(&format!("/v1/reviews/{}/{verb}", urlencode(id)), &body)?;
        let r: Review = serde_json::from_str(&out)?;
        match r.status {
            ReviewStatus::Pending => println!(
                "review {}: pending, {} of {} approvals ({})",
                r.id,
                r.approvers.len(),
                r.min_approvers,
                r.approvers.join(", ")
            ),
            ReviewStatus::Approved => println!(
                "review {}: approved by {}, {}",
                r.id,
                r.approvers.join(", "),
                if r.reusable {
                    "usable repeatedly until its window ends"
                } else {
                    "usable once"
                }
            ),
            s => println!("review {}: {s}", r.id),
        }
        Ok(())
    };
    match cmd {
        ReviewCommand::List {
            status,
            json,
            client,
        } => {
            let q = match status.as_str() {
                "all" => String::new(),
                s if ReviewStatus::parse(s).is_some() => format!("?status={s}"),
                s => bail!(
                    "--status must be pending, approved, denied, expired, used or all, not `{s}`"
                ),
            };
            let out = Api::new(client)?.get(&format!("/v1/reviews{q}"))?;
            if json {
                println!("{out}");
                return Ok(());
            }
            let reviews: Vec<Review> = serde_json::from_str(&out)?;
            println!(
                "{:<36}  {:<8}  {:<16}  {:<12}  {:<9}  STATEMENT",
                "ID", "STATUS", "IDENTITY", "CONNECTION", "APPROVALS"
            );
            for r in reviews {
                let mut stmt: String = r.statement.split_whitespace().collect::<Vec<_>>().join(" ");
                if stmt.chars().count() > 60 {
                    stmt = stmt.chars().take(59).chain(['…']).collect();
                }
                println!(
                    "{:<36}  {:<8}  {:<16}  {:<12}  {:<9}  {stmt}",
                    r.id,
                    r.status.as_str(),
                    r.identity,
                    r.connection,
                    format!("{}/{}", r.approvers.len(), r.min_approvers)
                );
            }
            Ok(())
        }
        ReviewCommand::Show { id, client } => {
            let out = Api::new(client)?.get(&format!("/v1/reviews/{}", urlencode(&id)))?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        ReviewCommand::Approve {
            id,
            window,
            comment,
            client,
        } => {
            let window_s = window
                .map(|w| sluice_controlplane::document::parse_duration(&w).map(|d| d.as_secs()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
            decide(
                client,
                &id,
                "approve",
                serde_json::json!({"comment": comment, "window_s": window_s}),
            )
        }
        ReviewCommand::Deny {
            id,
            comment,
            client,
        } => decide(client, &id, "deny", serde_json::json!({"comment": comment})),
    }
}
