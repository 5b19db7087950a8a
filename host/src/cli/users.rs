//! `cashbackd user add|show|list|import` and `cashbackd conversion reprocess|attribute`:
//! user accounts, and what an operator does with conversions that wait (the admin API
//! has the same operations under `/api/v1/users` and `/api/v1/conversions`).

use super::{Cli, with_service};
use crate::conversions::{Assignment, Outcome, Status};
use crate::users::{self, Profile};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `cashbackd user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user account or replace its profile; conversions parked for the user are
    /// processed at once.
    Add {
        /// The site's user id (what it passes as `?user=` on tracked links).
        id: String,
        /// Where the digests go.
        #[arg(long)]
        email: Option<String>,
        /// The name the digests greet.
        #[arg(long)]
        name: Option<String>,
        /// Send this user no digest.
        #[arg(long)]
        no_digest: bool,
    },
    /// A user's account, balances and latest conversions.
    Show {
        /// The user id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// User accounts, by id.
    List {
        /// Start after this id (the last of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Create or update accounts from a CSV file with the header `id,email[,name]`. Every
    /// row is checked before any is written.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}

/// `cashbackd conversion ...`
#[derive(Debug, Subcommand)]
pub enum ConversionCommand {
    /// Process a parked or failed conversion again with the current rules, or all of
    /// them (`--status failed|parked`, of one `--merchant`).
    Reprocess {
        /// The conversion id (`cv_...`).
        #[arg(conflicts_with = "status", required_unless_present = "status")]
        id: Option<String>,
        /// Every conversion with this status: failed or parked.
        #[arg(long)]
        status: Option<String>,
        /// Only this merchant's (with --status).
        #[arg(long, requires = "status")]
        merchant: Option<String>,
        /// Who (for the history).
        #[arg(long, default_value = "cli")]
        operator: String,
        /// Why (for the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Attribute a parked conversion by hand: to the click it came from, or to a user and
    /// a merchant; then process it.
    Attribute {
        /// The conversion id.
        id: String,
        /// The click it came from.
        #[arg(long, conflicts_with_all = ["user"])]
        click: Option<String>,
        /// The user to credit (the merchant: --merchant, or the one the network's merchant
        /// reference is mapped to).
        #[arg(long)]
        user: Option<String>,
        /// The merchant whose rules apply.
        #[arg(long)]
        merchant: Option<String>,
        /// Who decided.
        #[arg(long)]
        operator: String,
    },
}

/// Runs `cashbackd user ...`.
pub fn run_user(cli: &Cli, command: &UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Add { id, email, name, no_digest } => {
            let profile = Profile { email: email.clone(), name: name.clone(), notify: !no_digest };
            users::check_id(id).map_err(anyhow::Error::msg).context("ID")?;
            profile.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
            let id = id.clone();
            with_service(cli, |service, _| async move {
                let existed = users::get(service.db(), &id).await?.is_some();
                let outcome = service.put_user(&id, &profile, "cli").await?;
                println!("user {id} {}", if existed { "updated" } else { "created" });
                if let Outcome::Registered { unparked } = outcome
                    && !unparked.is_empty()
                {
                    println!("processed {} parked conversion(s): {}", unparked.len(), unparked.join(", "));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        UserCommand::Show { id, json } => {
            let (id, json) = (id.clone(), *json);
            with_service(cli, |service, _| async move {
                let Some(user) = users::get(service.db(), &id).await? else { bail!("no user {id:?}") };
                let (latest, _) = users::conversions(service.db(), &id, None, 20).await?;
                if json {
                    println!("{}", serde_json::json!({ "user": user, "conversions": latest }));
                    return Ok(ExitCode::SUCCESS);
                }
                println!("user {}  email {}  name {}", user.id, or_dash(&user.email), or_dash(&user.name));
                println!(
                    "digests {}  created {} (by {})  parked conversions {}",
                    if user.notify { "on" } else { "off" },
                    super::fmt_time(user.created_at),
                    user.source,
                    user.parked
                );
                if user.balances.is_empty() {
                    println!("no balance yet");
                }
                for b in &user.balances {
                    println!(
                        "  {:<10} {:<18} {}",
                        b.currency,
                        b.kind,
                        cashback_sdk::money::format(b.amount, &b.currency)
                    );
                }
                for c in &latest {
                    println!(
                        "  {}  {}  {:<9} {:<14} cashback {}",
                        c.id,
                        super::fmt_time(c.reported_at),
                        c.state,
                        c.status,
                        cashback_sdk::money::format(c.cashback, &c.currency)
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        UserCommand::List { after, limit } => {
            if !(1..=10_000).contains(limit) {
                bail!("--limit: 1 to 10000, got {limit}");
            }
            let (after, limit) = (after.clone(), *limit);
            with_service(cli, |service, _| async move {
                for u in users::list(service.db(), after.as_deref(), limit).await? {
                    println!("{}\t{}\t{}\t{}", u.id, or_dash(&u.email), u.source, super::fmt_time(u.created_at));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        UserCommand::Import { file } => {
            let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let rows = users::parse_csv(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            with_service(cli, |service, _| async move {
                let (mut created, mut updated, mut processed) = (0, 0, 0);
                for (id, profile) in &rows {
                    let existed = users::get(service.db(), id).await?.is_some();
                    if let Outcome::Registered { unparked } = service.put_user(id, profile, "import").await? {
                        processed += unparked.len();
                    }
                    if existed { updated += 1 } else { created += 1 }
                }
                println!("{created} created, {updated} updated; {processed} parked conversion(s) processed");
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// Runs `cashbackd conversion ...`.
pub fn run_conversion(cli: &Cli, command: &ConversionCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConversionCommand::Reprocess { id, status, merchant, operator, reason } => {
            let why = match reason {
                Some(r) => format!("processed again by {operator}: {r}"),
                None => format!("processed again by {operator}"),
            };
            let status = match status.as_deref() {
                None => None,
                Some(s) => match Status::parse(s) {
                    Some(s @ (Status::Failed | Status::Parked)) => Some(s),
                    _ => bail!("--status: {s:?} is not failed or parked"),
                },
            };
            let (id, merchant) = (id.clone(), merchant.clone());
            with_service(cli, |service, _| async move {
                if let Some(status) = status {
                    let (done, still) = service.reprocess_all(merchant.as_deref(), status, &why).await?;
                    println!("{done} conversion(s) processed again; {still} still {status}");
                    return Ok(ExitCode::SUCCESS);
                }
                let id = id.unwrap_or_default();
                match service.reprocess_with(&id, Some(&why), None).await? {
                    Outcome::Applied { state, status, .. } => {
                        println!("{id}: {state}, {status}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Outcome::Ignored { reason, .. } => bail!("{id}: not processed again: {reason}"),
                    other => bail!("{id}: unexpected outcome {other:?}"),
                }
            })
        }
        ConversionCommand::Attribute { id, click, user, merchant, operator } => {
            let assign = Assignment {
                click_id: click.clone(),
                user_id: user.clone(),
                merchant_id: merchant.clone(),
                operator: operator.clone(),
            };
            let id = id.clone();
            with_service(cli, |service, _| async move {
                let reason = format!("attributed by hand by {}", assign.operator);
                match service.reprocess_with(&id, Some(&reason), Some(assign)).await? {
                    Outcome::Applied { state, status, .. } => {
                        println!("{id}: {state}, {status}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Outcome::Ignored { reason, .. } => bail!("{id}: not attributed: {reason}"),
                    other => bail!("{id}: unexpected outcome {other:?}"),
                }
            })
        }
    }
}
