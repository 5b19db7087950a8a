//! `cashbackd payout list|show|request|approve|reject|paid|failed`: payouts from the
//! command line, on the database (`--database-url`), through the same checks and the same
//! writer as the admin API. Amounts are given and shown in the currency's major unit
//! (`12.50` EUR); the API takes minor units.

use super::{Cli, fmt_time, with_service};
use crate::payouts::{self, NewPayout, Payout, PayoutAction, PayoutError, PayoutFilter, PayoutStatus, Transition};
use anyhow::bail;
use cashback_sdk::money;
use clap::Subcommand;
use std::process::ExitCode;

/// `cashbackd payout ...`
#[derive(Debug, Subcommand)]
pub enum PayoutCommand {
    /// Payouts, newest first (oldest first with --oldest), a page at a time.
    List {
        /// requested, approved, rejected, paid or failed.
        #[arg(long)]
        status: Option<String>,
        /// Of one user.
        #[arg(long)]
        user: Option<String>,
        /// Oldest first (the queue order).
        #[arg(long)]
        oldest: bool,
        /// At most (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// The cursor the previous page printed (`next: ...`).
        #[arg(long)]
        after: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A payout with its history and its ledger postings.
    Show {
        /// The payout (`po_...`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Request a payout for a user, as the site does through the API (for operators).
    Request {
        /// The user.
        user: String,
        /// ISO currency (EUR).
        #[arg(long)]
        currency: String,
        /// In the currency's major unit (`12.50`); without it, all of the available balance.
        #[arg(long)]
        amount: Option<String>,
        /// Idempotency key: the same key for the same user is the same payout (a retry
        /// requests nothing twice).
        #[arg(long)]
        key: Option<String>,
        /// Who asks [default: cli:$USER].
        #[arg(long)]
        operator: Option<String>,
    },
    /// Approve a requested payout.
    Approve {
        /// The payout.
        id: String,
        /// Who [default: cli:$USER].
        #[arg(long)]
        operator: Option<String>,
        /// Refuse if the payout is no longer at this version (as `show` printed it).
        #[arg(long)]
        version: Option<i64>,
    },
    /// Reject a payout: its amount returns to the user's available balance.
    Reject {
        /// The payout.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Who [default: cli:$USER].
        #[arg(long)]
        operator: Option<String>,
        /// Refuse if the payout is no longer at this version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Mark an approved payout paid, with the external payment reference.
    Paid {
        /// The payout.
        id: String,
        /// The external payment reference (bank transfer id...).
        #[arg(long)]
        reference: String,
        /// Who [default: cli:$USER].
        #[arg(long)]
        operator: Option<String>,
        /// Refuse if the payout is no longer at this version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Mark a payout's payment failed (or come back): its amount returns to available.
    Failed {
        /// The payout.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Who [default: cli:$USER].
        #[arg(long)]
        operator: Option<String>,
        /// Refuse if the payout is no longer at this version.
        #[arg(long)]
        version: Option<i64>,
    },
}

/// The operator recorded when none is given: who runs the command.
fn operator(given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())))
}

/// An amount in major units as minor units of `currency`, exactly: more decimals than
/// the currency has is refused rather than rounded (a payout is never a guess).
fn parse_amount(text: &str, currency: &str) -> anyhow::Result<i64> {
    let minor = money::parse_decimal(text, currency, money::Rounding::Down)
        .map_err(|e| anyhow::anyhow!("--amount: {text:?}: {e}"))?;
    let exact =
        money::parse_decimal(text, currency, money::Rounding::Up).map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
    if minor != exact {
        bail!("--amount: {text:?} has more decimals than {currency} has ({})", money::minor_unit_exponent(currency));
    }
    if minor <= 0 {
        bail!("--amount: must be above 0, got {text:?}");
    }
    Ok(minor)
}

/// A refusal as the command line words it: the API's field names are flags here.
fn refused(e: PayoutError) -> anyhow::Error {
    let text = e.to_string();
    for (field, flag) in [
        ("amount: ", "--amount: "),
        ("currency: ", "--currency: "),
        ("after: ", "--after: "),
        ("limit: ", "--limit: "),
        ("reason: ", "--reason: "),
        ("reference: ", "--reference: "),
        ("operator: ", "--operator: "),
        ("idempotency key: ", "--key: "),
    ] {
        if let Some(rest) = text.strip_prefix(field) {
            return anyhow::anyhow!("{flag}{rest}");
        }
    }
    anyhow::anyhow!(text)
}

fn line(p: &Payout) -> String {
    format!(
        "{:<24} {:<16} {:>14} {:<9} v{:<3} requested {}{}{}",
        p.id,
        p.user_id,
        money::format(p.amount, &p.currency),
        p.status.as_str(),
        p.version,
        fmt_time(p.requested_at),
        p.reference.as_deref().map(|r| format!("  ref {r}")).unwrap_or_default(),
        p.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default(),
    )
}

/// Runs a `payout` command.
pub fn run(cli: &Cli, command: &PayoutCommand) -> anyhow::Result<ExitCode> {
    // Input checked before anything is opened: a bad flag costs no database connection.
    let status =
        match command {
            PayoutCommand::List { status: Some(s), .. } => Some(PayoutStatus::parse(s).ok_or_else(|| {
                anyhow::anyhow!("--status: {s:?} is not requested, approved, rejected, paid or failed")
            })?),
            _ => None,
        };
    let amount = match command {
        PayoutCommand::Request { amount: Some(a), currency, .. } => {
            payouts::service::check_currency(currency).map_err(refused)?;
            Some(parse_amount(a, currency)?)
        }
        _ => None,
    };
    let policy = cli.settings.payouts.policy();
    with_service(cli, |service, _| async move {
        match command {
            PayoutCommand::List { user, oldest, limit, after, json, .. } => {
                let filter = PayoutFilter {
                    status,
                    user: user.clone(),
                    oldest_first: *oldest,
                    limit: Some(*limit),
                    after: after.clone(),
                };
                let page = payouts::service::list(&service, &filter).await.map_err(refused)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&page)?);
                } else {
                    for p in &page.payouts {
                        println!("{}", line(p));
                    }
                    if let Some(next) = &page.next {
                        println!("next: {next}  (--after {next})");
                    }
                }
            }
            PayoutCommand::Show { id, json } => {
                let p = payouts::service::get(&service, id).await.map_err(refused)?;
                let history = payouts::store::history(service.db(), id).await?;
                let postings = payouts::store::postings(service.db(), id).await?;
                if *json {
                    let doc = serde_json::json!({ "payout": p, "history": history, "postings": postings });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!("{}", line(&p));
                for h in &history {
                    println!(
                        "  {} {} -> {}  {}",
                        fmt_time(h.at),
                        h.from_status.as_deref().unwrap_or("-"),
                        h.to_status,
                        h.detail
                    );
                }
                for posting in &postings {
                    let entries: Vec<String> = posting
                        .entries
                        .iter()
                        .map(|(owner, kind, amount)| format!("{owner}/{kind} {}", money::format(*amount, &p.currency)))
                        .collect();
                    println!("  posting {} ({}): {}", posting.key, posting.cause, entries.join(", "));
                }
            }
            PayoutCommand::Request { user, currency, key, operator: who, .. } => {
                let new = NewPayout {
                    user_id: user.clone(),
                    currency: currency.clone(),
                    amount,
                    key: key.clone(),
                    requested_by: operator(who),
                };
                let (p, created) = payouts::service::request(&service, &policy, new).await.map_err(refused)?;
                let what = if created { "requested" } else { "was requested before with this key" };
                println!("payout {} {what}: {} for {}", p.id, money::format(p.amount, &p.currency), p.user_id);
            }
            PayoutCommand::Approve { id, operator: who, version } => {
                step(&service, id, PayoutAction::Approve, who, *version).await?;
            }
            PayoutCommand::Reject { id, reason, operator: who, version } => {
                step(&service, id, PayoutAction::Reject { reason: reason.clone() }, who, *version).await?;
            }
            PayoutCommand::Paid { id, reference, operator: who, version } => {
                step(&service, id, PayoutAction::MarkPaid { reference: reference.clone() }, who, *version).await?;
            }
            PayoutCommand::Failed { id, reason, operator: who, version } => {
                step(&service, id, PayoutAction::MarkFailed { reason: reason.clone() }, who, *version).await?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn step(
    service: &crate::conversions::Service,
    id: &str,
    action: PayoutAction,
    who: &Option<String>,
    version: Option<i64>,
) -> anyhow::Result<()> {
    let t = Transition { action, operator: operator(who), expected_version: version };
    let (p, changed) = payouts::service::transition(service, id, t).await.map_err(refused)?;
    let amount = money::format(p.amount, &p.currency);
    if changed {
        println!("payout {} is {} ({amount} for {}, version {})", p.id, p.status, p.user_id, p.version);
    } else {
        println!("payout {} was {} already: nothing changed", p.id, p.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_exactly_in_the_currency_s_major_unit() {
        assert_eq!(parse_amount("12.50", "EUR").expect("ok"), 1_250);
        assert_eq!(parse_amount("12", "EUR").expect("ok"), 1_200);
        assert_eq!(parse_amount("1500", "JPY").expect("ok"), 1_500);
        let e = parse_amount("12.345", "EUR").expect_err("too precise").to_string();
        assert_eq!(e, "--amount: \"12.345\" has more decimals than EUR has (2)");
        assert!(parse_amount("0", "EUR").expect_err("zero").to_string().starts_with("--amount: "));
        assert!(parse_amount("-3", "EUR").expect_err("negative").to_string().starts_with("--amount: "));
        assert!(parse_amount("ten", "EUR").expect_err("text").to_string().starts_with("--amount: "));
    }
}
