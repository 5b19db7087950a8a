//! `cashbackd token ...` and `session ...`: admin API tokens and dashboard sessions.

use super::*;

/// `cashbackd token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        /// Who or what it is for.
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Days until it expires (never, if absent).
        #[arg(long)]
        expires_days: Option<i64>,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (`tok_...`).
        id: String,
    },
}

/// `cashbackd session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// The open sessions: id, token, scope, opened, expires.
    List,
    /// Sign a session out (`ses_...`), or every session of a token (`tok_...`).
    Revoke {
        /// A session's id, or a token's id.
        id: String,
    },
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Token { ref command } => {
            let command = match command {
                TokenCommand::Create { name, scope, expires_days } => {
                    let scope = crate::auth::Scope::parse(scope)
                        .ok_or_else(|| anyhow::anyhow!("--scope: {scope:?} is not read, write or admin"))?;
                    if expires_days.is_some_and(|d| d <= 0) {
                        bail!("--expires-days: must be at least 1");
                    }
                    Ok((name.clone(), scope, *expires_days))
                }
                TokenCommand::Revoke { id } => Err(id.clone()),
            };
            with_service(cli, |service, _| async move {
                match command {
                    Ok((name, scope, days)) => {
                        let now = service.now();
                        let token = crate::auth::create_token(
                            service.db(),
                            &name,
                            scope,
                            now,
                            days.map(|d| now + d * crate::clock::DAY_MS),
                        )
                        .await?;
                        println!("{token}");
                        eprintln!("token for {name} ({} scope); shown once, store it now", scope.as_str());
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(id) => {
                        if crate::auth::revoke(service.db(), &id, service.now()).await? {
                            println!("token {id} revoked");
                            Ok(ExitCode::SUCCESS)
                        } else {
                            bail!("no active token {id}")
                        }
                    }
                }
            })
        }
        Command::Session { ref command } => with_service(cli, |service, _| async move {
            let now = service.now();
            match command {
                SessionCommand::List => {
                    for s in crate::auth::open_sessions(service.db(), now).await? {
                        println!(
                            "{}\t{} ({})\t{}\topened {}\texpires {}",
                            s.id,
                            s.caller.id,
                            s.caller.name,
                            s.caller.scope.as_str(),
                            super::fmt_time(s.created_at),
                            super::fmt_time(s.expires_at)
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                SessionCommand::Revoke { id } => {
                    if !id.starts_with("ses_") && !id.starts_with("tok_") {
                        bail!("{id:?}: give a session id (ses_...) or a token id (tok_...)");
                    }
                    match crate::auth::revoke_sessions(service.db(), id, now).await? {
                        0 => bail!("no open session of {id}"),
                        n => {
                            println!("{n} session(s) of {id} signed out");
                            Ok(ExitCode::SUCCESS)
                        }
                    }
                }
            }
        }),
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}
