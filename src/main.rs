use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spendgate::admin::keys::FirstKey;
use spendgate::cli::{self, ClientArgs};
use spendgate::config::Config;

/// spendgate: virtual cards and spending rules for AI agents.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML settings file; SPENDGATE_* environment variables override it.
    #[arg(long, global = true, env = "SPENDGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Load demo agents, cards and policies into an empty database and print an admin key.
        #[arg(long)]
        demo: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API keys on a running server.
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::KeysCommand,
    },
    /// Manage agents on a running server.
    Agents {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::AgentsCommand,
    },
    /// Issue and manage cards on a running server.
    Cards {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::CardsCommand,
    },
    /// Send one authorization to a running server in a processor's format, signed with the configured
    /// secret, and print the decision.
    Simulate(cli::simulate::SimulateArgs),
}

fn main() -> ExitCode {
    spendgate::install_tls();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { demo } => load_config(cli.config).and_then(|c| serve(c, demo)),
        Command::Migrate => load_config(cli.config).and_then(migrate),
        Command::Keys { client, command } => cli::run(client, cli::Command::Keys(command)),
        Command::Agents { client, command } => cli::run(client, cli::Command::Agents(command)),
        Command::Cards { client, command } => cli::run(client, cli::Command::Cards(command)),
        Command::Simulate(args) => Config::load(cli.config.as_deref()).and_then(|c| cli::simulate::run(&c, args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let config = Config::load(path.as_deref())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .map_err(|e| anyhow::anyhow!("log filter {:?}: {e}", config.log))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    Ok(config)
}

fn migrate(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let db = spendgate::store::Db::connect(&config.database_url, 1)?;
        let applied = db.migrate().await?;
        println!("applied {} migration(s){}", applied.len(), if applied.is_empty() { "" } else { ":" });
        for name in applied {
            println!("  {name}");
        }
        Ok(())
    })
}

fn serve(mut config: Config, demo: bool) -> anyhow::Result<()> {
    if demo && config.master_key.is_none() {
        config.master_key = Some(demo_master_key(&config)?);
    }
    actix_web::rt::System::new().block_on(async move {
        let started = spendgate::start(&config).await?;
        let base = format!("http://{}", started.addr);
        match &started.first_key {
            FirstKey::Created(key) => println!(
                "\nFirst start: created an owner API key. It is shown only this once; store it now:\n\n    {key}\n"
            ),
            FirstKey::Bootstrapped => tracing::info!("the bootstrap admin key is now the first owner key"),
            FirstKey::Existing => {}
        }
        if demo {
            let setup = spendgate::demo::setup(&started.admin, &started.usdc).await?;
            if setup.loaded {
                println!("Demo data loaded: 2 agents with cards and policies.");
            }
            println!(
                "\nDemo owner key (replaced at each --demo start):\n\n    {key}\n\nTry:\n\n    \
                 curl -s -H 'Authorization: Bearer {key}' {base}/v1/agents\n",
                key = setup.key
            );
        }
        tracing::info!(database = %redact_url(&config.database_url), "storage ready");
        // The last line of the banner: scripts may wait for it.
        println!("spendgate is listening on {base}");
        started.server.await?;
        Ok(())
    })
}

/// `serve --demo` without SPENDGATE_MASTER_KEY: the key in `master.key` beside the SQLite file,
/// made (mode 0600) on the first start. Wallet keys sealed with it open only with it.
fn demo_master_key(config: &Config) -> anyhow::Result<spendgate::config::Secret> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let dir = config
        .database_url
        .strip_prefix("sqlite://")
        .and_then(|path| Path::new(path).parent())
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("data"))
        .to_path_buf();
    let path = dir.join("master.key");
    if path.exists() {
        let key = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        return Ok(spendgate::config::Secret::new(key.trim()));
    }
    std::fs::create_dir_all(&dir)?;
    let key = spendgate::rails::usdc::wallet::MasterKey::generate_base64();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    writeln!(file, "{}", key.as_str())?;
    println!(
        "Generated the wallet master key into {} (mode 0600). Keep it: agents' wallet keys open only with it.",
        path.display()
    );
    Ok(spendgate::config::Secret::new(key.as_str()))
}

/// The database URL without its password, for the log.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
