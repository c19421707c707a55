//! The `zmount` command line: argument parsing, logging set-up and the subcommands. Each subcommand lives in its
//! own file and returns an exit code; nothing here knows about providers beyond calling the storage API.

mod check;
mod explain;
mod mount;
mod progress;
mod search;
mod transfer;
mod url;
mod variants;

pub use mount::is_mounted;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "zmount",
    version,
    about = "Mount one directory tree over many storage providers"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// mount.toml to mount (with MOUNTPOINT)
    config: Option<PathBuf>,
    /// Where to mount the tree
    mountpoint: Option<PathBuf>,
    #[command(flatten)]
    mount: mount::MountArgs,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Test every configured provider: reachability, list, write/read/delete of a probe object, latency
    Check {
        /// The mount.toml to read
        config: PathBuf,
        /// Only these providers (default: all)
        #[arg(long = "provider")]
        providers: Vec<String>,
    },
    /// Show which rule, provider, fallbacks and object key a path maps to
    Explain {
        /// The mount.toml to read
        config: PathBuf,
        /// Paths in the mount (e.g. photos/2024/cat.jpg), one or more
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Print a URL for a file: CDN, signed (S3/Wasabi/GCS/Azure) or base_url (local)
    Url {
        /// The mount.toml to read
        config: PathBuf,
        /// Path of the file in the mount (e.g. reports/q4.pdf)
        path: String,
        /// Lifetime of a signed URL, in seconds
        #[arg(long, default_value_t = 3600)]
        expires: u64,
    },
    /// Print the files whose tags and metadata match (path and provider), across all providers
    Search {
        /// The mount.toml to read
        config: PathBuf,
        /// Tag that must be present, KEY=VALUE (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata that must be present, KEY=VALUE (repeatable; keys are case-insensitive)
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// Only below this folder
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Copy objects from one provider to another, verified; resumable (a rerun skips what is done)
    Migrate {
        /// mount.toml naming the providers
        config: PathBuf,
        /// Provider to copy from
        #[arg(long)]
        from: String,
        /// Provider to copy to
        #[arg(long)]
        to: String,
        /// Only paths matching this glob (`*` crosses `/`)
        #[arg(long)]
        pattern: Option<String>,
        /// Delete each source object once its copy is verified
        #[arg(long)]
        delete_source: bool,
        /// Print the plan only
        #[arg(long)]
        dry_run: bool,
    },
    /// Transform images and write their variants now, as the mount does after each upload (routes with
    /// `transforms`/`variants`)
    Variants {
        /// The mount.toml to read
        config: PathBuf,
        /// Files: a path, a folder (every file below it), or a glob (`*` also crosses `/`)
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Make the target provider match the source: copy new and changed objects, optionally delete extras
    Sync {
        /// mount.toml naming the providers
        config: PathBuf,
        /// Provider whose objects are the reference
        #[arg(long)]
        source: String,
        /// Provider made to match it
        #[arg(long)]
        target: String,
        /// Only paths matching this glob (`*` crosses `/`)
        #[arg(long)]
        pattern: Option<String>,
        /// Delete objects on the target that the source does not have
        #[arg(long)]
        delete: bool,
        /// Print the plan only
        #[arg(long)]
        dry_run: bool,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// glibc gives each thread that allocates its own arena (up to eight per core), and blocks allocated on one
/// thread and freed on another (a GET's buffers, the disk tier's writes) leave each arena holding memory: a
/// whole-object fill measured 145–154 MiB of peak resident memory with the default, 84–91 MiB with two arenas, at
/// the same speed. Before any thread exists.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

pub fn main() -> ExitCode {
    // Everything zmount creates for itself (cache blocks, staging copies, journals, logs) is private to the user
    // running it, whatever the umask; files of a local provider get the modes the user's umask gives them.
    // SAFETY: umask only swaps the process's file mode mask.
    let user_umask = unsafe { libc::umask(0o077) };
    crate::providers::set_user_umask(user_umask as u32);
    bound_malloc_arenas();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match cli.command {
        Some(Command::Check { config, providers }) => {
            runtime.block_on(check::run(&config, &providers))
        }
        Some(Command::Explain { config, paths }) => explain::run(&config, &paths),
        Some(Command::Url {
            config,
            path,
            expires,
        }) => runtime.block_on(url::run(&config, &path, expires)),
        Some(Command::Search {
            config,
            tags,
            meta,
            prefix,
        }) => runtime.block_on(search::run(&config, &tags, &meta, &prefix)),
        Some(Command::Migrate {
            config,
            from,
            to,
            pattern,
            delete_source,
            dry_run,
        }) => {
            let options = transfer::Options {
                pattern,
                dry_run,
                delete_source,
                delete_extra: false,
            };
            let kind = transfer::Kind::Migrate;
            runtime.block_on(transfer::run(&config, kind, &from, &to, &options))
        }
        Some(Command::Sync {
            config,
            source,
            target,
            pattern,
            delete,
            dry_run,
        }) => {
            let options = transfer::Options {
                pattern,
                dry_run,
                delete_source: false,
                delete_extra: delete,
            };
            let kind = transfer::Kind::Sync;
            runtime.block_on(transfer::run(&config, kind, &source, &target, &options))
        }
        Some(Command::Variants { config, targets }) => {
            runtime.block_on(variants::run(&config, &targets))
        }
        None => match (cli.config, cli.mountpoint) {
            (Some(config), Some(mountpoint)) => {
                drop(runtime); // the mount builds its own runtime after any daemonizing
                mount::run(&config, &mountpoint, &cli.mount)
            }
            _ => {
                eprintln!("usage: zmount CONFIG MOUNTPOINT, or zmount COMMAND (see zmount --help)");
                ExitCode::from(2)
            }
        },
    }
}

/// The multi-threaded tokio runtime every command runs on; None (with the reason printed) if it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("zmount: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Loads a config and builds its storage, printing the error the way every subcommand does.
fn load_storage(path: &std::path::Path) -> Option<(crate::Config, crate::Storage)> {
    storage_of(load_config(path)?)
}

/// The storage of `config` (the error printed as by every subcommand).
fn storage_of(config: crate::Config) -> Option<(crate::Config, crate::Storage)> {
    match crate::Storage::new(&config) {
        Ok(storage) => Some((config, storage)),
        Err(e) => {
            eprintln!("zmount: {e}");
            None
        }
    }
}

/// Loads a config, printing the error the way every subcommand does.
fn load_config(path: &std::path::Path) -> Option<crate::Config> {
    printed(crate::Config::load(path))
}

fn printed(loaded: Result<crate::Config, crate::config::ConfigError>) -> Option<crate::Config> {
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("zmount: {e}");
            None
        }
    }
}
