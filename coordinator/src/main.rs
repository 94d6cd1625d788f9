//! `quintet-coordinator`: sequences every write of a quintet cluster and
//! decides each batch with two-phase commit.

mod config;
mod driver;
mod replica;
mod server;
mod service;

use clap::Parser;

#[tokio::main]
async fn main() {
    let config = config::Config::parse();
    quintet_common::telemetry::init(config.log_format, "info");
    quintet_common::telemetry::exit_on_panic();
    tracing::info!(?config, "starting");
    if let Err(e) = server::run(config, quintet_common::shutdown::signal()).await {
        eprintln!("error: {}", quintet_common::telemetry::error_line(&e));
        std::process::exit(1);
    }
}
