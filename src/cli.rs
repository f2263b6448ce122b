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
    /// Smoke-test an image: boot it headless, wait for [health], stop it (exit 0 healthy,
    /// 1 never healthy, 3 over the boot budget).
    Test(TestArgs),
    /// What is inside an image (verified from its bytes), or what changed between two.
    Inspect(InspectArgs),
    /// Write the image as qcow2, vmdk, ova, vhd, gce (tar.gz) or raw; prints the file's path.
    Export(ExportArgs),
    /// Write a config disk (FAT, label FUSECONFIG, /env) for hypervisors without fw_cfg.
    ConfigDisk(ConfigDiskArgs),
    /// List the images in the local store: name, version, digest, size, age.
    Ls(LsArgs),
    /// Tag an image of the store (or add an image file) as NAME:VERSION.
    Tag(TagArgs),
    /// Remove tags, or images by digest, from the local store.
    Rm(RmArgs),
    /// Delete store images no tag (and no environment's current digest) refers to.
    Gc(GcArgs),
    /// Record that an environment runs an image's digest (append-only ledger).
    Promote(PromoteArgs),
    /// Show each environment's current digest, its servers, and the promotion and deployment
    /// history.
    Envs(EnvsArgs),
    /// Replace an environment's servers with servers of IMAGE, blue-green behind its switch
    /// (exit 5 when a gate fails; the old servers keep serving).
    Deploy(DeployArgs),
    /// Deploy the digest an environment ran before its current one (or --to DIGEST).
    Rollback(RollbackArgs),
    /// Upload an image to an OCI registry as an artifact.
    Push(PushArgs),
    /// Download an image from an OCI registry, verified, into a file and the local store.
    Pull(PullArgs),
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
    /// Print the build plan (every unit, its inputs and key) as JSON and build nothing.
    #[arg(long)]
    pub plan: bool,
    /// One JSON object on stdout (digest, paths, size, layers and their cache source, lock,
    /// duration, budgets; docs/ci.md) instead of the path and digest lines.
    #[arg(long, conflicts_with = "plan")]
    pub json: bool,
    /// Build a second time from the same lock and app without any unit cache, in a temp
    /// dir, and compare the bytes: exit 4 when they differ.
    #[arg(long, conflicts_with = "plan")]
    pub verify: bool,
    /// Share built units (layers, kernel, initramfs, UKI) through an OCI registry:
    /// REGISTRY/REPOSITORY. Every planned unit is looked up there before it is built, and
    /// what the registry lacks is pushed. `--insecure` allows plain HTTP.
    #[arg(long, env = "FUSE_CACHE_REGISTRY", value_name = "REF")]
    pub cache_registry: Option<String>,
    #[command(flatten)]
    pub reg: RegistryArgs,
    /// Sign the UKI for UEFI Secure Boot with this RSA key (PEM, PKCS#8 or PKCS#1,
    /// unencrypted); needs --sign-cert.
    #[arg(long, env = "FUSE_SIGN_KEY", requires = "sign_cert")]
    pub sign_key: Option<PathBuf>,
    /// The certificate (PEM) matching --sign-key; firmware trusting it boots the image.
    #[arg(long, env = "FUSE_SIGN_CERT", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
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
    /// The image to boot (raw .img or any format `fuse export` writes), or NAME:VERSION, digest or unique digest prefix of an
    /// image in the local store.
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
pub struct TestArgs {
    /// The raw image (.img), or NAME:VERSION, digest or unique digest prefix in the store.
    pub image: PathBuf,
    /// Env file (KEY=VALUE lines) passed to the app at boot, over the image's defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds from QEMU's start until the app must answer [health] (else exit 1).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// One JSON object on stdout (the schema of docs/ci.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The boot budget (e.g. "20s"), over the manifest's [budget] boot.
    #[arg(long, value_name = "DURATION")]
    pub boot_budget: Option<String>,
    /// The fuse.toml (or its directory) whose [budget] boot applies; default: the manifest
    /// the image was built from when found beside it (<dir>/fuse-out/x.img -> <dir>/fuse.toml,
    /// or ./fuse.toml) and its sha256 matches the image's inputs.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Memory for the VM in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Accelerator: auto (KVM when it really boots, else TCG), kvm, or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The image (raw .img or any format `fuse export` writes); with NEW, the old side of
    /// the comparison.
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

/// Registry connection options shared by push, pull and promote.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Allow plain HTTP to the registry (and to its token service).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name; the password comes from FUSE_REGISTRY_PASSWORD. Without it,
    /// FUSE_REGISTRY_USERNAME or the Docker config's auths are used when present.
    #[arg(long)]
    pub username: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The image: a file in any format fuse reads, or NAME:VERSION, digest or unique digest
    /// prefix of an image in the local store.
    pub image: String,
    /// The format to write.
    #[arg(long, value_parser = ["qcow2", "vmdk", "ova", "vhd", "gce", "raw"])]
    pub format: String,
    /// Output directory (default: the image file's directory; the current directory for a
    /// store reference). The file is named <name>-<version>.<qcow2|vmdk|ova|vhd|tar.gz|img>.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ConfigDiskArgs {
    /// The env file (KEY=VALUE lines) to put on the disk as /env.
    pub file: PathBuf,
    /// The raw disk to write (FAT, label FUSECONFIG); attach it as a second disk.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Machine-readable output (full digests, Unix times).
    #[arg(long)]
    pub json: bool,
    /// Full digests in the table.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// An image in the store (NAME:VERSION, digest, unique prefix) or an image file to add.
    pub source: String,
    /// The new tag, NAME:VERSION.
    pub tag: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// NAME:VERSION removes that tag; a digest or unique prefix removes the image, its tags
    /// and its bytes.
    #[arg(required = true)]
    pub refs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// The project file whose ledger's current digests are kept (default ./fuse-envs.toml).
    #[arg(long)]
    pub envs: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The image: a file, or NAME:VERSION, digest or unique prefix in the local store.
    pub image: String,
    /// The environment that now runs it (e.g. test, staging, prod).
    pub env: String,
    /// Who promotes (default $USER).
    #[arg(long)]
    pub who: Option<String>,
    /// The env file the environment runs the image with; its sha256 is recorded.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The project file with the promotion order (default ./fuse-envs.toml when present).
    #[arg(long)]
    pub envs: Option<PathBuf>,
    /// Also tag the image (already pushed to REGISTRY/REPOSITORY) in the registry, by its
    /// manifest digest; the tag is the environment unless REF names one.
    #[arg(long, value_name = "REF")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub reg: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct EnvsArgs {
    /// Only this image name.
    pub image: Option<String>,
    /// The project file (default ./fuse-envs.toml when present).
    #[arg(long)]
    pub envs: Option<PathBuf>,
    /// Machine-readable output: {"current": [...], "history": [...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The raw image: a file, or NAME:VERSION, digest or unique prefix in the local store.
    pub image: String,
    /// The environment (an [env.NAME] of fuse-envs.toml with a target).
    pub env: String,
    /// The project file (default ./fuse-envs.toml).
    #[arg(long)]
    pub envs: Option<PathBuf>,
    /// Who deploys (default $USER).
    #[arg(long)]
    pub who: Option<String>,
    /// Print the deployment's ledger entry as JSON (servers, steps, upload figures).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The environment.
    pub env: String,
    /// The digest to go back to (it must have run in ENV); default: the one before the
    /// current one.
    #[arg(long, value_name = "DIGEST")]
    pub to: Option<String>,
    /// The image name, when the environment runs several.
    #[arg(long)]
    pub image: Option<String>,
    /// The project file (default ./fuse-envs.toml).
    #[arg(long)]
    pub envs: Option<PathBuf>,
    /// Who rolls back (default $USER).
    #[arg(long)]
    pub who: Option<String>,
    /// Print the deployment's ledger entry as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The image: a file, or NAME:VERSION, digest or unique prefix in the local store.
    /// Several images (one name and version, one per architecture) are pushed as one OCI
    /// image index under the tag, an entry per image with its platform.
    #[arg(required = true, num_args = 1.., value_name = "IMAGE")]
    pub images: Vec<String>,
    /// REGISTRY/REPOSITORY[:TAG] (the tag defaults to the image's version).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Send the raw disk as one blob instead of one blob per partition.
    #[arg(long)]
    pub whole: bool,
    #[command(flatten)]
    pub reg: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:<manifest or image index digest>.
    pub reference: String,
    /// Where to write <name>-<version>.img and .json (default: the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The architecture to pull (amd64 or arm64): from an image index, its entry for
    /// linux/ARCH (default: the only entry, else this host's architecture); a single image
    /// must be of ARCH.
    #[arg(long, value_name = "ARCH", value_parser = crate::arch::Arch::parse)]
    pub arch: Option<crate::arch::Arch>,
    #[command(flatten)]
    pub reg: RegistryArgs,
}
