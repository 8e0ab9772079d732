//! The `luna-lambda` binary: parses the command line, loads the configuration and
//! runs the server or packs a lambda. Thin on purpose; everything lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use luna_lambda::config::{Config, Overrides};
use luna_lambda::model::LambdaType;

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
    /// Pack a built component into an archive ready to upload, checked the way the
    /// server checks it (every problem printed).
    Pack {
        /// A .wasm component, a directory holding lambda.wasm, or a Cargo package
        /// directory built with `cargo build --release --target wasm32-wasip2`.
        input: PathBuf,
        /// The archive to write.
        #[arg(short, long, default_value = "lambda.zip")]
        output: PathBuf,
        /// The lambda_type the archive will be created with: standalone, handlers or tasks.
        #[arg(long, default_value = "standalone")]
        lambda_type: String,
        /// TOML configuration whose limits apply (default: the built-in ones and
        /// LUNA_LAMBDA_* variables).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (config, listen, data_dir) = match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => (config, listen, data_dir),
        Command::Pack {
            input,
            output,
            lambda_type,
            config,
        } => return pack(&input, &output, &lambda_type, config.as_deref()),
    };
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

fn pack(
    input: &std::path::Path,
    output: &std::path::Path,
    lambda_type: &str,
    config: Option<&std::path::Path>,
) -> std::process::ExitCode {
    let lambda_type = match lambda_type.parse::<LambdaType>() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("luna-lambda pack: --lambda-type: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let config = match Config::load(config, std::env::vars(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-lambda pack: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match luna_lambda::pack::pack(&config, input, output, lambda_type) {
        Ok(packed) => {
            println!(
                "wrote {} ({} bytes): lambda.wasm from {}{}; checks passed for a {} lambda",
                output.display(),
                packed.archive.len(),
                packed.wasm.display(),
                packed
                    .openapi
                    .map(|p| format!(", {}", p.display()))
                    .unwrap_or_default(),
                lambda_type.as_str(),
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("luna-lambda pack: {e}");
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
