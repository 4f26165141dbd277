//! The `seckill` command line: `serve`, `sink`, `token` and `bench` (SPEC §8).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use seckill::auth::Signer;
use seckill::clock::{Clock, SystemClock};
use seckill::config::Config;
use seckill::store::keys::valid_id;

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
    /// Run only the orders sink (SPEC §9): Redis streams into PostgreSQL,
    /// until SIGTERM or SIGINT (the batch in hand is finished first).
    Sink {
        /// Consumer name, stable across restarts; default `<host name>:sink`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The books of an event side by side (stock, sold, buyers, orders,
    /// unpersisted, rows) and whether they balance: exit 0 when they do, 1
    /// when they do not (saying what differs), 2 when they cannot be read.
    Check {
        /// Event id.
        #[arg(long)]
        event: String,
        /// Only this goods.
        #[arg(long)]
        goods: Option<String>,
        /// Seconds to give the sink to persist what is pending first.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load generator: distinct users buying one goods; prints req/s,
    /// latency percentiles, codes, and whether wins stayed within the stock.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Base URL of the server, http://HOST:PORT.
    #[arg(long)]
    url: String,
    /// Event id.
    #[arg(long)]
    event: String,
    /// Goods id.
    #[arg(long)]
    goods: String,
    /// Distinct users (tokens for PREFIX0 .. PREFIX(N-1)).
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Connections in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Requests in all; default one per user.
    #[arg(long)]
    requests: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Reuse connections (default: one request per connection).
    #[arg(long)]
    keepalive: bool,
    /// Per-request timeout in ms.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Uid prefix.
    #[arg(long, default_value = "u")]
    prefix: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// The secret; default: `auth.secret` from the config.
    #[arg(long)]
    secret: Option<String>,
    /// Also write the run as one self-contained HTML page (rates, latency,
    /// codes over time) to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<std::path::PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
struct ConfigArg {
    /// Config file; default $SECKILL_CONFIG, else ./config.toml.
    #[arg(long, env = "SECKILL_CONFIG", default_value = "config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Command::Check {
        event,
        goods,
        wait,
        json,
        config,
    } = &cli.command
    {
        return check(event, goods.as_deref(), *wait, *json, config);
    }
    match run(cli) {
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
        // Handled in `main`: it has exit codes of its own.
        Command::Check { .. } => Ok(()),
        Command::Sink { name, config } => {
            let config = Config::load(&config.config).map_err(|e| e.to_string())?;
            if config.sink.url.is_empty() {
                return Err("sink.url is empty: set it in the config".into());
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())
                    .map_err(|e| format!("signal handler: {e}"))?;
            }
            let setup = seckill::orders::sink::SinkSetup {
                redis: config.redis.endpoint(),
                redis_timeout: config.redis.timeout(),
                name: name
                    .unwrap_or_else(|| format!("{}:sink", seckill::orders::sink::host_name())),
                config: config.sink,
            };
            seckill::orders::sink::Sink::new(setup, seckill::metrics::Metrics::default(), stop)?
                .run();
            Ok(())
        }
        Command::Token {
            uid,
            count,
            prefix,
            ttl,
            secret,
            config,
        } => {
            let secret = secret_from(secret, &config)?;
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
        Command::Bench(a) => {
            let secret = secret_from(a.secret, &a.config)?;
            let duration = match a.duration {
                Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
                Some(_) => return Err("--duration must be a number of seconds above 0".into()),
                None => None,
            };
            seckill::client::bench::run(seckill::client::bench::BenchConfig {
                url: a.url,
                event: a.event,
                goods: a.goods,
                users: a.users,
                concurrency: a.concurrency,
                requests: a.requests,
                duration,
                keepalive: a.keepalive,
                timeout: std::time::Duration::from_millis(a.timeout_ms),
                prefix: a.prefix,
                secret,
                json: a.json,
                report: a.report,
            })
        }
    }
}

/// `seckill check`: 0 balanced, 1 not, 2 unreadable (SPEC §8).
fn check(event: &str, goods: Option<&str>, wait: f64, json: bool, config: &ConfigArg) -> ExitCode {
    let books = Config::load(&config.config)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let wait = if wait.is_finite() && wait > 0.0 {
                std::time::Duration::from_secs_f64(wait.min(3600.0))
            } else {
                std::time::Duration::ZERO
            };
            seckill::orders::check::check(&c, event, goods, wait)
        });
    match books {
        Ok(books) => {
            if json {
                let ok = books.balance();
                let v = serde_json::json!({"books": books, "balance": ok});
                println!("{v}");
            } else {
                print!("{}", books.table());
            }
            if books.balance() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("seckill check: {e}");
            ExitCode::from(2)
        }
    }
}

/// `--secret`, else `auth.secret` from the config; never empty.
fn secret_from(secret: Option<String>, config: &ConfigArg) -> Result<String, String> {
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
    Ok(secret)
}
