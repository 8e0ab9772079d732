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
    about = "A luna-lambda compatible serverless host",
    arg_required_else_help = true,
    after_help = "Start the service with `luna-lambda serve`: the API answers on \
                  http://127.0.0.1:5210, its manual at /1/docs/dev.\n\
                  Exit status: 0 stopped cleanly (SIGTERM, Ctrl-C) or packed; 1 failed \
                  while starting, serving or packing; 2 bad command line or configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// TOML configuration file (settings also come from LUNA_LAMBDA_* variables;
        /// its relative paths are relative to the file's directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:5210; LUNA_LAMBDA_LISTEN).
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<SocketAddr>,
        /// Data directory: store, archives, compiled artifacts, key (default ./data,
        /// relative to the directory the service is started in; LUNA_LAMBDA_DATA_DIR).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Internal: compile one component for the service, under limits (started by the
    /// service itself; the component and settings come on stdin).
    #[command(hide = true, name = "compile-worker")]
    CompileWorker {
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long)]
        cpu_secs: u64,
        #[arg(long)]
        memory_mb: u64,
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
    /// Copy a stopped service's embedded (sled) store into the empty PostgreSQL
    /// database of the configuration (store.backend = "postgres", store.postgres_url,
    /// encryption_key): lambdas, build jobs, logs, key-value data, image records and
    /// archives. The source is left as it is.
    MigrateStore {
        /// The stopped service's data directory (it holds store/ and archives/).
        #[arg(long, value_name = "DIR")]
        from_data_dir: PathBuf,
        /// TOML configuration naming the target (settings also come from
        /// LUNA_LAMBDA_* variables).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Exit status of a bad command line or configuration (the status clap uses for usage
/// errors); 1 is kept for failures at run time.
const EXIT_USAGE: u8 = 2;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(&e),
    };
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
        Command::MigrateStore {
            from_data_dir,
            config,
        } => return migrate_store(&from_data_dir, config.as_deref()),
        Command::CompileWorker {
            cache_dir,
            cpu_secs,
            memory_mb,
        } => {
            let status = luna_lambda::runtime::run_compile_worker(&cache_dir, cpu_secs, memory_mb);
            return std::process::ExitCode::from(u8::try_from(status).unwrap_or(1));
        }
    };
    let config = match Config::load(
        config.as_deref(),
        std::env::vars(),
        &Overrides { listen, data_dir },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-lambda: {e}");
            return std::process::ExitCode::from(EXIT_USAGE);
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

/// Help and version go to stdout as clap prints them; a mistake is one line on stderr
/// naming the help to read, instead of clap's usage block.
fn command_line_error(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            std::process::ExitCode::from(EXIT_USAGE)
        } else {
            std::process::ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let problem = lines
        .first()
        .map_or("bad command line", |l| l.trim_start_matches("error: "));
    // clap's tips ("a similar argument exists: '--listen'") are worth the line.
    let tips: String = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tip: "))
        .map(|tip| format!("; {tip}"))
        .collect();
    // "Usage: luna-lambda serve [OPTIONS]" names the command whose help applies.
    let command = lines
        .iter()
        .find_map(|l| l.strip_prefix("Usage: "))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "luna-lambda".to_owned());
    eprintln!("luna-lambda: {problem}{tips} (see '{command} --help')");
    std::process::ExitCode::from(EXIT_USAGE)
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
            return std::process::ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::load(config, std::env::vars(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-lambda pack: {e}");
            return std::process::ExitCode::from(EXIT_USAGE);
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

fn migrate_store(
    from: &std::path::Path,
    config: Option<&std::path::Path>,
) -> std::process::ExitCode {
    let config = match Config::load(config, std::env::vars(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-lambda migrate-store: {e}");
            return std::process::ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("luna-lambda migrate-store: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut progress = |line: &str| println!("{line}");
    match runtime.block_on(luna_lambda::migrate::migrate_store(
        &config,
        from,
        &mut progress,
    )) {
        Ok(done) => {
            println!(
                "migrated {} lambdas from {} into the database; start the service with store.backend = \"postgres\"",
                done.lambdas,
                from.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("luna-lambda migrate-store: {e}");
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
