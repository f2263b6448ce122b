//! The `fuse` command: parse arguments, set up logging, run, map errors to exit codes
//! (0 ok, 1 differences found / not healthy, 2 error, 3 over budget, 4 not reproducible,
//! 5 a deployment failed a gate;
//! docs/ci.md). Codes other than 2 come from the commands as `Ok(code)`.

use clap::Parser;
use fuse::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // A file-size limit (ulimit -f) makes a write fail with EFBIG, reported like ENOSPC,
    // instead of killing the process mid-write.
    // SAFETY: setting a signal's disposition to SIG_IGN at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "fuse=info",
        1 => "fuse=debug",
        _ => "debug",
    };
    let filter = std::env::var("FUSE_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let result = match cli.command {
        Command::Build(a) => fuse::commands::build::run(&a),
        Command::Lock(a) => fuse::commands::lock::run(&a),
        Command::Run(a) => fuse::commands::run::run(&a),
        Command::Test(a) => fuse::commands::test::run(&a),
        Command::Inspect(a) => fuse::commands::inspect::run(&a),
        Command::Export(a) => fuse::commands::export::run(&a),
        Command::ConfigDisk(a) => fuse::commands::configdisk::run(&a),
        Command::Ls(a) => fuse::commands::images::ls(&a),
        Command::Tag(a) => fuse::commands::images::tag(&a),
        Command::Rm(a) => fuse::commands::images::rm(&a),
        Command::Gc(a) => fuse::commands::images::gc(&a),
        Command::Promote(a) => fuse::commands::promote::promote(&a),
        Command::Envs(a) => fuse::commands::promote::envs(&a),
        Command::Deploy(a) => fuse::commands::deploy::deploy(&a),
        Command::Rollback(a) => fuse::commands::deploy::rollback(&a),
        Command::Push(a) => fuse::commands::registry::push(&a),
        Command::Pull(a) => fuse::commands::registry::pull(&a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // Every error is 2, a failed verification (fuse::inspect::VerificationFailed)
        // included: 1 means "differences found" and comes only as Ok(1).
        Err(e) => {
            // Messages quote untrusted text (image.json, archives): no terminal escapes.
            let msg = format!("{e:#}");
            eprintln!("error: {}", fuse::util::text::for_terminal(&msg));
            ExitCode::from(2)
        }
    }
}
