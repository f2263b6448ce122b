//! Command-line types (clap) only: parsing, no behaviour.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "fuse",
    version,
    about = "Fuse an app into one immutable, content-addressed, bootable disk image"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); FUSE_LOG=<filter> overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build the image of fuse.toml; prints its digest (sha256:...) as the last line.
    Build(BuildArgs),
    /// Resolve the manifest's packages and pin them in fuse.lock (without building).
    Lock(LockArgs),
    /// Boot an image locally under QEMU (UEFI), forward the app's port, wait for health.
    Run(RunArgs),
    /// What is inside an image (verified from its bytes), or what changed between two.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The app directory holding fuse.toml, or the manifest file itself.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output directory (default: <app dir>/fuse-out).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Accept an archive index that is not signed (never a badly signed one).
    #[arg(long)]
    pub insecure_allow_unsigned: bool,
    /// Accept an archive index whose Valid-Until has passed.
    #[arg(long)]
    pub allow_expired: bool,
    /// Fail if fuse.lock is missing or does not match the manifest (CI).
    #[arg(long)]
    pub locked: bool,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The app directory holding fuse.toml, or the manifest file itself.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Re-resolve against the archive's current state even if the lock matches.
    #[arg(long)]
    pub update: bool,
    /// Accept an archive index that is not signed (never a badly signed one).
    #[arg(long)]
    pub insecure_allow_unsigned: bool,
    /// Accept an archive index whose Valid-Until has passed.
    #[arg(long)]
    pub allow_expired: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The raw image (.img) to boot.
    pub image: PathBuf,
    /// Env file (KEY=VALUE lines) passed to the app at boot, over the image's defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Forward HOST:GUEST TCP ports (default: the app port to a free host port).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Memory for the VM in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Accelerator: auto (KVM when it really boots, else TCG), kvm, or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The raw image (.img); with NEW, the old side of the comparison.
    pub image: PathBuf,
    /// A second image: print what changed from IMAGE to NEW (exit 1 when anything did).
    pub new: Option<PathBuf>,
    /// JSON on stdout, in the stable structure of docs/inspect.md.
    #[arg(long)]
    pub json: bool,
    /// Print a software bill of materials of IMAGE instead of the summary.
    #[arg(long, value_enum, conflicts_with_all = ["new", "json"])]
    pub sbom: Option<SbomKind>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbomKind {
    /// SPDX 2.3 JSON
    Spdx,
    /// CycloneDX 1.5 JSON
    Cyclonedx,
}
