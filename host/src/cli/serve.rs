//! `cashbackd serve`, `demo` and `migrate`: the server (through `crate::server`, the one
//! assembly), the demo on a fresh SQLite file, and the schema's migrations.

use super::*;

/// Runs the command (`cli::run` dispatches here).
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { ref plugins, ref demo_database, listen, once } => {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = demo_database.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
            let url = format!("sqlite://{}", demo_database.display());
            let plugins = plugins.clone();
            // The demo plays a network's reporting API and a partner's callback receiver
            // itself, on 127.0.0.1 (`demo/history.rs`): its adapters and callbacks may
            // reach loopback, which `serve` refuses unless configured.
            let mut settings = cli.settings.clone();
            settings.plugin.http_allow_private = true;
            settings.callbacks.allow_private = true;
            settings.database.url = url.clone();
            crate::metrics::install();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let server = crate::server::Server::connect(&settings, "demo").await?;
                server.spawn_delivery();
                // The dashboard's and the API's backtests run here, as in `serve`.
                server.spawn_backtests();
                crate::demo::run(server, &plugins, listen, &url, once).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let db = crate::db::Db::connect(&cli.database_url).await?;
                println!("database {} ({:?}) is up to date:", crate::db::redact(&cli.database_url), db.backend);
                for (version, description) in db.applied_migrations().await? {
                    println!("  {version} {description}");
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Serve { listen } => {
            let listen = listen.unwrap_or(cli.settings.http.listen);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async {
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
                crate::server::run(&cli.settings, listener).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("cli::run dispatches only this module's commands here"),
    }
}
