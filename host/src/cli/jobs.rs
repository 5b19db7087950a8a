//! `cashbackd jobs list|run|add`: the scheduler's jobs, run as `serve` runs them.

use super::*;

/// `cashbackd jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Every job, its schedule, next run and last run.
    List,
    /// Run a job now, whatever its schedule.
    Run {
        /// The job's name.
        name: String,
    },
    /// Schedule a network's API import.
    Add {
        /// The job's name.
        name: String,
        /// Cron expression: `0 * * * *` (hourly), `0 3 * * *` (daily), `@weekly`...
        #[arg(long)]
        schedule: String,
        /// The network whose report to import.
        #[arg(long)]
        import: String,
    },
}

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Jobs { ref command } => {
            let command = match command {
                JobsCommand::List => None,
                JobsCommand::Run { name } => Some((name.clone(), None)),
                JobsCommand::Add { name, schedule, import } => {
                    Some((name.clone(), Some((schedule.clone(), import.clone()))))
                }
            };
            let settings = cli.settings.clone();
            with_service(cli, |service, runtime| async move {
                crate::scheduler::ensure_system_jobs(&service).await.map_err(anyhow::Error::msg)?;
                match command {
                    None => {
                        for job in crate::scheduler::list(&service).await? {
                            let last = job.last_run.as_ref().map_or("never run".to_string(), |r| {
                                format!(
                                    "last {} ({} missed) {}",
                                    r.outcome,
                                    r.missed,
                                    r.detail.clone().unwrap_or_else(|| r.counts.to_string())
                                )
                            });
                            println!(
                                "{:<24} {:<14} next {}  {}",
                                job.name,
                                job.schedule,
                                fmt_time(job.next_run_at),
                                last
                            );
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Some((name, None)) => {
                        // The server's own assembly: the job runs with the configured
                        // notifier and delivery worker, as under `serve`.
                        let owner = format!("cli-{}", std::process::id());
                        let scheduler = crate::server::Server::new(service, runtime, &settings, &owner)?.scheduler();
                        let run = scheduler.run_now(&name).await.map_err(anyhow::Error::msg)?;
                        println!(
                            "{name}: {} {}",
                            run.outcome,
                            run.detail.clone().unwrap_or_else(|| run.counts.to_string())
                        );
                        Ok(if run.outcome == "ok" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                    }
                    Some((name, Some((schedule, network)))) => {
                        if crate::ingest::network(service.db(), &network).await?.is_none() {
                            bail!("--import: no network {network:?} (cashbackd network add)");
                        }
                        let kind = crate::scheduler::JobKind::Import { network };
                        crate::scheduler::upsert_job(&service, &name, &schedule, &kind)
                            .await
                            .map_err(|e| anyhow::anyhow!("--schedule: {e}"))?;
                        println!("job {name} saved");
                        Ok(ExitCode::SUCCESS)
                    }
                }
            })
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}
