use std::path::PathBuf;
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
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Demo data in an empty database, every local feature on (secrets made once into the data
        /// directory), and an owner key with three commands to try.
        #[arg(long)]
        demo: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Send one authorization in a processor's format for a card known by the processor's id,
    /// signed with the configured secret, and print the decision (a dry run unless --live).
    Simulate(cli::simulate::SimulateArgs),
    /// Serve the MCP tools over stdin and stdout, for an agent that starts its tools as programs:
    /// each call goes to the server at --url (SPENDGATE_URL) as the agent key --api-key
    /// (SPENDGATE_API_KEY).
    Mcp,
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> ExitCode {
    spendgate::install_tls();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { demo } => load_config(cli.config).and_then(|c| serve(c, demo)),
        Command::Migrate => load_config(cli.config).and_then(migrate),
        Command::Simulate(args) => Config::load(cli.config.as_deref()).and_then(|mut c| {
            spendgate::demo::fill_secrets(&mut c, false)?;
            cli::simulate::run(&c, args)
        }),
        Command::Mcp => cli::mcp(cli.client),
        Command::Client(command) => cli::run(cli.client, command, cli.config.as_deref()),
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
    let mut saved_key = None;
    if demo {
        // Offline, the demo still converts: with the table built in, labelled `bundled`.
        config.fx_accept_bundled = true;
        let made = spendgate::demo::fill_secrets(&mut config, true)?;
        if !made.is_empty() {
            let names: Vec<String> = made.iter().map(|p| p.display().to_string()).collect();
            println!(
                "Generated the demo's secrets (mode 0600; keep them, wallet keys open only with master.key): {}",
                names.join(", ")
            );
        }
        saved_key = spendgate::demo::saved_owner_key(&config)?;
        // On an empty database the demo's key becomes the first owner key: one key, printed once below.
        if config.bootstrap_admin_key.is_none() {
            let key = saved_key.clone().unwrap_or_else(spendgate::domain::key::generate_secret);
            config.bootstrap_admin_key = Some(spendgate::crypto::Secret::new(key));
        }
    }
    actix_web::rt::System::new().block_on(async move {
        let started = spendgate::start(&config).await?;
        let base = format!("http://{}", started.addr);
        match &started.first_key {
            FirstKey::Created(key) => println!(
                "\nFirst start: created an owner API key. It is shown only this once; store it now:\n\n    {key}\n"
            ),
            FirstKey::Bootstrapped if demo => {}
            FirstKey::Bootstrapped => tracing::info!("the bootstrap admin key is now the first owner key"),
            FirstKey::Existing => {}
        }
        if demo {
            let candidate = saved_key.as_deref().or(config.bootstrap_admin_key.as_ref().map(|k| k.expose()));
            let setup = spendgate::demo::setup(&started.admin, &started.usdc, candidate).await?;
            let saved_now = saved_key.as_deref() != Some(setup.key.as_str());
            if saved_now {
                spendgate::demo::save_owner_key(&config, &setup.key)?;
            }
            println!("{}", spendgate::demo::banner(&started.admin, &setup, saved_now, &base, &config).await?);
        }
        tracing::info!(database = %redact_url(&config.database_url), "storage ready");
        // The last line of the banner: scripts may wait for it.
        println!("spendgate is listening on {base}");
        started.server.await?;
        Ok(())
    })
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
