//! The `seckill` command line: `serve` and `token` (SPEC §8).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use seckill::auth::{valid_id, Signer};
use seckill::clock::{Clock, SystemClock};
use seckill::config::Config;

#[derive(Parser)]
#[command(
    name = "seckill",
    version,
    about = "Flash-sale HTTP endpoint on mio + httparse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print user tokens signed with `auth.secret`.
    Token {
        /// One token for this uid.
        #[arg(long, conflicts_with_all = ["count", "prefix"])]
        uid: Option<String>,
        /// Print N tokens, for users PREFIX0 .. PREFIX(N-1), one a line.
        #[arg(long, requires = "prefix")]
        count: Option<u64>,
        /// Uid prefix for --count.
        #[arg(long, requires = "count")]
        prefix: Option<String>,
        /// Seconds until the tokens expire.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// The secret; default: `auth.secret` from the config.
        #[arg(long)]
        secret: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Config file; default $SECKILL_CONFIG, else ./config.toml.
    #[arg(long, env = "SECKILL_CONFIG", default_value = "config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seckill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config.config).map_err(|e| e.to_string())?;
            seckill::serve::run(config, clock)
        }
        Command::Token {
            uid,
            count,
            prefix,
            ttl,
            secret,
            config,
        } => {
            let secret = match secret {
                Some(s) => s,
                None => {
                    Config::load(&config.config)
                        .map_err(|e| e.to_string())?
                        .auth
                        .secret
                }
            };
            if secret.is_empty() {
                return Err("auth.secret is empty: pass --secret or set it in the config".into());
            }
            let signer = Signer::new(secret.as_bytes());
            let exp = clock.unix_s().saturating_add(ttl);
            let uids: Vec<String> = match (uid, count, prefix) {
                (Some(uid), _, _) => vec![uid],
                (None, Some(n), Some(p)) => (0..n).map(|i| format!("{p}{i}")).collect(),
                _ => return Err("give --uid U, or --count N --prefix P".into()),
            };
            let mut out = String::new();
            for uid in uids {
                if !valid_id(uid.as_bytes()) {
                    return Err(format!("uid {uid:?} does not match [A-Za-z0-9_-]{{1,64}}"));
                }
                out.push_str(&signer.mint(&uid, exp));
                out.push('\n');
            }
            print!("{out}");
            Ok(())
        }
    }
}
