//! The `taba` binary: parses the command line and hands over to the library
//! crates. Each subcommand lives in its own module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// taba: many Linux hosts bundled to work as one computer.
#[derive(Parser, Debug)]
#[command(name = "taba", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: cmd::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole cluster (server and agent) in one process, for development.
    Dev(cmd::dev::DevArgs),
    /// Run a server (control plane).
    Server(cmd::server::ServerArgs),
    /// Run an agent (node).
    Agent(cmd::agent::AgentArgs),
    /// Submit, inspect and stop jobs.
    #[command(subcommand)]
    Job(cmd::cli::JobCommand),
    /// Inspect and operate on allocations.
    #[command(subcommand)]
    Alloc(cmd::cli::AllocCommand),
    /// Inspect nodes.
    #[command(subcommand)]
    Node(cmd::cli::NodeCommand),
    /// Manage container images.
    #[command(subcommand)]
    Image(cmd::cli::ImageCommand),
    /// Manage namespaces and their quotas.
    #[command(subcommand)]
    Namespace(cmd::cli::NamespaceCommand),
    /// Follow what changes in the cluster (jobs, allocations, nodes, evaluations).
    Events(cmd::events::EventsArgs),
    /// Access control: bootstrap, policies, tokens.
    #[command(subcommand)]
    Acl(cmd::acl::AclCommand),
    /// The cluster CA and certificates.
    #[command(subcommand)]
    Tls(cmd::tls::TlsCommand),
    /// Drive the real scheduler against a simulated cluster.
    Sim(cmd::sim::SimArgs),
    /// Benchmarks that need the real binary.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Print the shell completion script (e.g. `source <(taba completion bash)`).
    Completion(cmd::shell::CompletionArgs),
    /// Write the man pages of every command.
    Man(cmd::shell::ManArgs),
    /// Task supervisor started by the agent (internal).
    #[command(hide = true)]
    Shim(cmd::shim::ShimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The shim must not start threads before it forks the workload.
        Command::Shim(args) => cmd::shim::run(args),
        Command::Dev(args) => cmd::dev::run_dev(&cli.global, args),
        Command::Server(args) => cmd::server::run_server(&cli.global, args),
        Command::Agent(args) => cmd::agent::run_agent(&cli.global, args),
        Command::Job(c) => cmd::cli::job(&cli.global, c),
        Command::Alloc(c) => cmd::cli::alloc(&cli.global, c),
        Command::Node(c) => cmd::cli::node(&cli.global, c),
        Command::Image(c) => cmd::cli::image(&cli.global, c),
        Command::Namespace(c) => cmd::cli::namespace(&cli.global, c),
        Command::Events(args) => cmd::events::run(&cli.global, args),
        Command::Acl(c) => cmd::acl::run(&cli.global, c),
        Command::Tls(c) => cmd::tls::run(&cli.global, c),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Completion(args) => cmd::shell::completion(args),
        Command::Man(args) => cmd::shell::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
