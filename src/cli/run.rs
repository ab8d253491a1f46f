//! `keyproxy run`: serve until SIGTERM/SIGINT; SIGHUP re-reads every key source.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use keyproxy::config::Config;
use keyproxy::key::rotation::Trigger;
use keyproxy::server::Server;

pub(crate) async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    // Handlers first: a signal that arrives while starting must not take its default action (exit).
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let server = Server::bind(&config)
        .await
        .context("keyproxy cannot start")?;
    let proxy = Arc::clone(server.proxy());
    let sighup = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: re-reading every key source");
            proxy.reload_all(Trigger::Sighup, true).await;
            tracing::info!("SIGHUP: every key source re-read");
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    server.run(shutdown).await;
    sighup.abort();
    Ok(ExitCode::SUCCESS)
}
