//! The `luna-lambda` binary: parses the command line, loads the configuration and
//! runs the server. Thin on purpose; everything lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use luna_lambda::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "luna-lambda",
    version,
    about = "A luna-lambda compatible serverless host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// TOML configuration file (settings also come from LUNA_LAMBDA_* variables).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:5210).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve {
        config,
        listen,
        data_dir,
    } = cli.command;
    let config = match Config::load(
        config.as_deref(),
        std::env::vars(),
        &Overrides { listen, data_dir },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-lambda: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luna-lambda: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    luna_lambda::telemetry::init(&config);
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        "starting luna-lambda {}",
        env!("CARGO_PKG_VERSION")
    );
    let server = luna_lambda::Server::start(config).await?;
    let addr = server.local_addr()?;
    // Scripts and tests read the bound address (port 0 resolved) from this line.
    println!("luna-lambda listening on http://{addr}");
    server.serve(luna_lambda::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
