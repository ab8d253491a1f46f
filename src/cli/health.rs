//! `keyproxy health`: `/healthz` of a running keyproxy, for container HEALTHCHECKs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use keyproxy::config::Config;

use super::admin_base;

pub(crate) async fn health(admin: Option<String>, config: PathBuf) -> anyhow::Result<ExitCode> {
    let base = match admin {
        Some(url) => url,
        None => admin_base(Config::load(&config)?.server.admin_listen),
    };
    let url = format!("{}/healthz", base.trim_end_matches('/'));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = client.get(url.parse().context("invalid --admin URL")?);
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), request)
        .await
        .with_context(|| format!("{url}: no answer within 5s"))?
        .with_context(|| format!("{url}: request failed"))?;
    if response.status().is_success() {
        println!("healthy: {url}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("unhealthy: {url} answered {}", response.status());
        Ok(ExitCode::FAILURE)
    }
}
