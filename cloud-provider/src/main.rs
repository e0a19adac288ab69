//! Entry point: parse flags, set up logging, run, map the outcome to an
//! exit code (0 after a clean shutdown, 1 on any fatal error, 2 on bad
//! usage as clap reports it).

use std::process::ExitCode;

use kubevirt_ccm::cli::{CliError, Options};
use tracing_subscriber::EnvFilter;

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,kubevirt_ccm={level},kubevirt_cloud_controller_manager={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Worker threads: the work is I/O-bound; more threads only cost memory.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(4)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let (options, warnings) = match Options::parse_from(std::env::args()) {
        Ok(parsed) => parsed,
        Err(CliError::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(options.verbosity);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    match kubevirt_ccm::app::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
