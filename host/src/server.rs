//! The one assembly of a running cashbackd: the service, its router, the delivery worker,
//! the notifier and the scheduler, built from the settings in one place.
//!
//! `cashbackd serve` calls [`run`]; `cashbackd demo` and the integration tests build a
//! [`Server`] around a service of their own (a demo database, an injected clock) and use
//! the same router and workers, so what they exercise is what `serve` runs (Svix's
//! `run_with_prefix` is the model).

use crate::callbacks::Deliverer;
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::conversions::Service;
use crate::db::Db;
use crate::http::{AppState, HttpConfig, MetricsAccess};
use crate::notify::{Notifier, NotifyConfig};
use crate::payouts::PayoutPolicy;
use crate::plugin::PluginRuntime;
use crate::scheduler::Scheduler;
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A cashbackd ready to serve: everything a request or a job of it can reach.
#[derive(Clone)]
pub struct Server {
    /// The conversion service (database, writer, clock).
    pub service: Service,
    /// The plugin runtime (one engine, its artifact cache).
    pub runtime: Arc<PluginRuntime>,
    /// The partner-callback delivery worker.
    pub deliverer: Deliverer,
    /// The user-digest sender.
    pub notifier: Notifier,
    /// Who this process is in leases (jobs, deliveries): unique per replica.
    pub owner: String,
    http: HttpConfig,
    metrics: MetricsAccess,
    payouts: PayoutPolicy,
    notify_schedule: String,
}

impl Server {
    /// Connects to `settings.database.url` (migrating it), opens the plugin store and
    /// assembles a server on the system clock.
    pub async fn connect(settings: &Settings, owner: &str) -> anyhow::Result<Server> {
        let db = Db::connect(&settings.database.url).await?;
        let runtime = Arc::new(PluginRuntime::new(settings.runtime_config(&settings.plugin.store))?);
        let service = Service::new(db, runtime.clone(), Arc::new(SystemClock), Default::default());
        Server::new(service, runtime, settings, owner)
    }

    /// Assembles a server around `service`: the settings' HTTP limits, callback and
    /// notification configuration. Nothing runs until [`Server::spawn_workers`] or
    /// [`Server::serve`].
    pub fn new(
        service: Service,
        runtime: Arc<PluginRuntime>,
        settings: &Settings,
        owner: &str,
    ) -> anyhow::Result<Server> {
        let delivery = settings.callbacks.delivery(settings.callbacks.allow_private);
        // Endpoints with a partner-callback plugin are rendered by it, on this runtime.
        let deliverer = Deliverer::new(service.db().clone(), service.clock(), delivery, owner.to_string())?
            .with_plugins(runtime.clone());
        let notifier = Notifier::new(service.db().clone(), service.clock(), notify_config(settings))?;
        Ok(Server {
            service,
            runtime,
            deliverer,
            notifier,
            owner: owner.to_string(),
            http: HttpConfig::from_settings(settings),
            metrics: MetricsAccess { require_token: settings.metrics.require_token },
            payouts: settings.payouts.policy(),
            notify_schedule: settings.notify.schedule.clone(),
        })
    }

    /// The same server with other HTTP limits (tests and benchmarks that must not be
    /// rate-limited).
    pub fn with_http(mut self, http: HttpConfig) -> Server {
        self.http = http;
        self
    }

    /// The same server with another delivery worker (a test's, on its own clock and
    /// limits).
    pub fn with_deliverer(mut self, deliverer: Deliverer) -> Server {
        self.deliverer = deliverer;
        self
    }

    /// The same server with another payout policy.
    pub fn with_payouts(mut self, policy: PayoutPolicy) -> Server {
        self.payouts = policy;
        self
    }

    /// The whole HTTP surface: ingress, admin API, dashboard, operations.
    pub fn router(&self) -> Router {
        let state = AppState { service: self.service.clone(), runtime: self.runtime.clone() };
        crate::http::router_with(state, self.http.clone(), crate::dashboard::routes())
            .layer(axum::Extension(self.deliverer.clone()))
            .layer(axum::Extension(self.notifier.clone()))
            .layer(axum::Extension(self.metrics))
            .layer(axum::Extension(self.payouts.clone()))
    }

    /// The scheduler of this server's jobs, with its delivery worker and notifier.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.service.clone(), self.runtime.clone(), self.owner.clone())
            .with_callbacks(self.deliverer.clone())
            .with_notifier(self.notifier.clone())
    }

    /// Registers the built-in jobs, and the digest's schedule as configured
    /// (`notify.schedule`).
    pub async fn prepare_jobs(&self) -> anyhow::Result<()> {
        crate::scheduler::ensure_system_jobs(&self.service).await.map_err(anyhow::Error::msg)?;
        if crate::scheduler::set_schedule(&self.service, "notify", &self.notify_schedule)
            .await
            .map_err(anyhow::Error::msg)?
        {
            tracing::info!(schedule = %self.notify_schedule, "notify job scheduled as configured (notify.schedule)");
        }
        Ok(())
    }

    /// Starts the delivery worker, which sends new callbacks as they come.
    pub fn spawn_delivery(&self) {
        tokio::spawn(self.deliverer.clone().run_worker());
    }

    /// Starts the backtest worker: backtests run here, never inside a request.
    pub fn spawn_backtests(&self) {
        tokio::spawn(crate::backtests::Worker::new(self.service.clone(), self.owner.clone()).run());
    }

    /// Starts the delivery worker, the backtest worker and the scheduler's tick, once a
    /// second.
    pub fn spawn_workers(&self) {
        self.spawn_delivery();
        self.spawn_backtests();
        let scheduler = self.scheduler();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = scheduler.tick().await {
                    tracing::error!(error = %e, "scheduler tick failed");
                }
            }
        });
    }

    /// Serves the router on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::http::serve_router(self.router(), listener, shutdown).await
    }
}

/// `cashbackd serve`: connects, registers the jobs, starts the workers and serves on
/// `listener` until Ctrl-C.
pub async fn run(settings: &Settings, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    crate::metrics::install();
    let addr = listener.local_addr().context("the listener's address")?;
    let owner = format!("{addr}-{}", std::process::id());
    let server = Server::connect(settings, &owner).await?;
    server.prepare_jobs().await?;
    server.spawn_workers();
    println!("cashbackd listening on http://{addr}");
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The digests' configuration, from `smtp.*` and `notify.*`.
pub fn notify_config(settings: &Settings) -> NotifyConfig {
    NotifyConfig {
        smtp_url: settings.smtp.url.clone(),
        ca_file: settings.smtp.ca_file.clone(),
        from: settings.smtp.from.clone(),
        templates_dir: settings.notify.templates.clone(),
        max_attempts: settings.notify.max_attempts,
        retry_delay_ms: settings.notify.retry_delay_secs.saturating_mul(1000),
        ..Default::default()
    }
}
