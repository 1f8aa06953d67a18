//! Command-line interface: argument definitions, dispatch, and the error edge.
//!
//! Every subcommand returns `anyhow::Result<ExitCode>`; an `Err` is printed as
//! one paragraph on stderr (see [`report_error`]) and exits with code 2, so a
//! user's mistake never ends in a panic.

pub mod apply_cmd;
pub mod check_cmd;
pub mod completions;
mod journal_cmds;
pub mod output;
pub mod plan_cmd;
pub mod policy_cmd;
pub mod rehearse_cmd;
pub mod sandbox_cmd;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine::state_dir;
use telemetry::DebugLog;

pub use output::OutputFormat;

/// Exit code for errors the user can act on (bad input, refused state dir, ...).
pub const EXIT_ERROR: u8 = 2;
/// Exit code of `plan` and `apply` when the plan has blockers no step fixes.
pub const EXIT_BLOCKED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "calico-migrate",
    version,
    about = "Migrate an EKS cluster from the aws-calico Helm chart to the Tigera Operator, \
             with policy enforcement checked on every node at every step.",
    long_about = "Migrate an EKS cluster from the aws-calico Helm chart to the Tigera Operator, \
                  with policy enforcement checked on every node at every step.\n\n\
                  The migration is a resumable state machine journaled in a state directory: \
                  `plan` reads the cluster and writes the steps, `apply` runs them (and \
                  `apply --resume` continues after a crash), `rollback` undoes completed steps. \
                  `rehearse` runs the whole job against an embedded sandbox cluster.",
    after_help = "Examples:\n  \
                  calico-migrate rehearse                      # the whole job on the embedded sandbox\n  \
                  calico-migrate plan --context prod -o markdown > plan.md\n  \
                  calico-migrate apply --yes\n  \
                  calico-migrate status -o json\n  \
                  calico-migrate rollback --to install-operator --yes"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every subcommand, named as kubectl names them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Where the journal, plan and snapshots are kept.
    #[arg(
        long,
        global = true,
        env = "CALICO_MIGRATE_STATE_DIR",
        default_value = ".calico-migrate",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// More log detail (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Never draw progress bars (they are also off when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the cluster, predict what would block the migration, and write the ordered steps.
    #[command(after_help = "Examples:\n  \
        calico-migrate plan --context prod                    # text, for the change ticket\n  \
        calico-migrate plan -o markdown > plan.md\n  \
        calico-migrate plan --operator-manifest tigera-operator.yaml   # pin the reviewed file\n\n\
        Exit codes: 0 ready to apply, 3 blockers no step fixes, 2 an error.")]
    Plan(plan_cmd::PlanArgs),
    /// Execute the plan's steps, checking enforcement between steps; --resume continues after a crash.
    #[command(after_help = "Examples:\n  \
        calico-migrate apply --dry-run                        # what each step would change\n  \
        calico-migrate apply --yes --pause-before takeover    # stop at a gate before the node swaps\n  \
        calico-migrate apply --resume --yes                   # after a crash, a failed check or a gate\n\n\
        Exit codes: 0 completed or paused at a gate, 1 stopped at a failed check, 2 an error,\n\
        3 the plan has blockers no step fixes.\n\
        A stop leaves the operator frozen; the message says which node and what to do.")]
    Apply(ApplyArgs),
    /// Undo completed steps in reverse order, even in the middle of the migration.
    #[command(after_help = "Examples:\n  \
        calico-migrate rollback --yes                         # back to the baseline, step by step\n  \
        calico-migrate rollback --to create-installation --yes  # undo down to this step only\n  \
        calico-migrate history                                # which steps completed\n\n\
        During or after the takeover, nodes move back to the kube-system calico-node one at a\n\
        time with the operator frozen, each probed through its swap.")]
    Rollback(RollbackArgs),
    /// Show where the migration stands, from the journal.
    #[command(after_help = "Examples:\n  \
        calico-migrate status\n  \
        calico-migrate status --state-dir /var/lib/calico-migrate -o json")]
    Status,
    /// List every journaled transition, oldest first.
    #[command(after_help = "Examples:\n  \
        calico-migrate history | tail\n  \
        calico-migrate history -o json | jq '.[] | select(.kind == \"step_failed\")'")]
    History,
    /// Run one round of connectivity and policy probes on every node.
    #[command(after_help = "Examples:\n  \
        calico-migrate check                                  # one round, exit 1 on a failure\n  \
        calico-migrate check --baseline                       # store this round to compare later ones\n  \
        calico-migrate check -o junit > check.xml             # for CI")]
    Check(check_cmd::CheckArgs),
    /// Compute expected reachability from policy files, compare policy sets, explain a verdict.
    Policy(policy_cmd::PolicyArgs),
    /// Run the embedded Kubernetes API server, seeded like an EKS cluster with aws-calico.
    Sandbox(sandbox_cmd::SandboxArgs),
    /// Run plan, apply, checks, rollback and a second apply against an embedded sandbox.
    #[command(after_help = "Examples:\n  \
        calico-migrate rehearse                               # 6 nodes, no fault\n  \
        calico-migrate rehearse --nodes 20 --fault lapse:@3   # a lapse on the 3rd node\n  \
        calico-migrate rehearse --fault operator-stall:@2 -o markdown > rehearsal.md\n  \
        calico-migrate rehearse --from-cluster --context prod # your own nodes, namespaces and policies\n\n\
        Exit codes: 0 the rehearsal passed, 1 it found a problem (the report says which), 2 an error.")]
    Rehearse(RehearseArgs),
    /// Print a shell completion script (bash, zsh, fish) on stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff) on stdout; `man SUBCOMMAND` for one subcommand's page.
    Man(completions::ManArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Continue a migration that stopped (crash, failed check, gate).
    #[arg(long)]
    pub resume: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print what each step would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop before this step starts (repeatable); `apply --resume` continues.
    #[arg(long, value_name = "STEP")]
    pub pause_before: Vec<String>,
    /// Seconds to pause after each node's swap (default: the profile's pacing). With a
    /// pause the operator is stopped after each node until it is verified; with 0 it
    /// runs on while the last node is checked (the next node's swap overlaps the
    /// checks) and is stopped only once `pacing.nodes_at_a_time` nodes have moved past
    /// a node not yet verified.
    #[arg(long, value_name = "SECONDS")]
    pub pause_seconds: Option<u64>,
    /// Seconds the Lease lock stays valid without renewal (renewed every third of it).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub lease_seconds: u64,
    /// Only against `calico-migrate sandbox --time-scale FACTOR`: divide pauses and
    /// waits by FACTOR and poll at the sandbox's pace. Never on a real cluster.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    pub sandbox_time_scale: f64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Roll back down to and including this step id (default: every completed step).
    #[arg(long, value_name = "STEP")]
    pub to: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Seconds to pause after each node moved back (default: the profile's pacing).
    #[arg(long, value_name = "SECONDS")]
    pub pause_seconds: Option<u64>,
    /// Seconds the Lease lock stays valid without renewal (renewed every third of it).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub lease_seconds: u64,
    /// Only against `calico-migrate sandbox --time-scale FACTOR`: divide pauses and
    /// waits by FACTOR and poll at the sandbox's pace. Never on a real cluster.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    pub sandbox_time_scale: f64,
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// Number of sandbox nodes.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub nodes: u64,
    /// Fargate nodes beside the EC2 nodes (label and taint
    /// `eks.amazonaws.com/compute-type=fargate`, one `fargate-apps` pod each): the
    /// migration must leave them alone, as no calico-node runs there.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=100))]
    pub fargate_nodes: u64,
    /// User namespaces seeded with the chart's usual policies.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=2000))]
    pub namespaces: u64,
    /// Seed for the sandbox's names, addresses and simulated timing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fault injected once the baseline is taken (repeatable): lapse:NODE,
    /// agent-not-ready:NODE, operator-stall:NODE, typha-stuck, node-join:N, api-errors:RATE, ...
    /// NODE may be `@N`, the N-th node in name order (`lapse:@2`).
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 50.0, value_name = "FACTOR")]
    pub time_scale: f64,
    /// Simulated seconds to pause after each node's swap (default: the profile's
    /// pacing); 0 rehearses the takeover with the operator running on while the last
    /// node is checked, as `apply --pause-seconds 0` does.
    #[arg(long, value_name = "SECONDS")]
    pub pause_seconds: Option<u64>,

    /// The Kubernetes minor the sandbox serves (1.21 to 1.34). plan picks the path for
    /// it as on a real cluster: 1.24 or older rehearses the same-version path (operator
    /// v1.17.4 over Calico v3.19.1), 1.25 and later the current path (align-versions to
    /// v3.30.3, then operator v1.38.6).
    #[arg(long, default_value_t = crate::sandbox::KubernetesVersion::default(),
          value_name = "1.MINOR", value_parser = sandbox_cmd::parse_kubernetes_version)]
    pub kubernetes_version: crate::sandbox::KubernetesVersion,
    /// Seed the sandbox with the live cluster's nodes, namespaces and every policy
    /// object (read only; --kubeconfig/--context pick the cluster). Pods are not copied.
    #[arg(long)]
    pub from_cluster: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    restore_sigpipe();
    // The state dir holds backups of Helm release Secrets and of every policy.
    state_dir::make_new_files_private();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    let long_running = matches!(
        cli.command,
        Command::Apply(_) | Command::Rollback(_) | Command::Rehearse(_)
    );
    let g = &cli.global;
    // The state dir is checked (refused when anyone can write it, made private when
    // others can read it) before anything, the debug log included, is written there.
    let use_ = state_dir_use(&cli.command);
    let prepared = match use_ {
        StateDirUse::None => Ok(None),
        StateDirUse::Reads => state_dir::prepare(&g.state_dir, false).map(Some),
        StateDirUse::Writes | StateDirUse::LogsOnly => {
            state_dir::prepare(&g.state_dir, true).map(Some)
        }
    };
    // rehearse keeps only its log there: a state dir it cannot use costs the log alone.
    let (prepared, log_refused) = match prepared {
        Ok(p) => (p, None),
        Err(err) if use_ == StateDirUse::LogsOnly => (None, Some(err)),
        Err(err) => {
            report_error(&anyhow::Error::new(err));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let log_file = log_name(&cli.command)
        .filter(|_| log_refused.is_none())
        .map(|name| telemetry::log_path(&g.state_dir, name));
    let log_file = telemetry::init(g, long_running, log_file.as_deref());
    if let Some(err) = log_refused {
        tracing::warn!("{err}; going on without the debug log");
    }
    if let Some(warning) = prepared.and_then(|p| p.warning(&g.state_dir)) {
        tracing::warn!("{warning}");
    }
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(err) => {
            report_error(&err);
            if let Some(log) = &log_file {
                log.append_if_written(&format!("error: {err:#}"));
            }
            ExitCode::from(EXIT_ERROR)
        }
    };
    if let Some(path) = log_file
        .as_ref()
        .and_then(DebugLog::written)
        .filter(|_| !g.quiet)
    {
        eprintln!("Full log: {}", path.display());
    }
    code
}

/// How a command uses the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateDirUse {
    None,
    /// Reads it if it is there (status, history, check).
    Reads,
    /// Writes it, creating it if missing.
    Writes,
    /// Keeps only its debug log there (rehearse runs in a state dir of its own).
    LogsOnly,
}

fn state_dir_use(command: &Command) -> StateDirUse {
    match command {
        Command::Plan(_) | Command::Apply(_) | Command::Rollback(_) => StateDirUse::Writes,
        Command::Check(args) if args.baseline => StateDirUse::Writes,
        Command::Check(_) | Command::Status | Command::History => StateDirUse::Reads,
        Command::Rehearse(_) => StateDirUse::LogsOnly,
        Command::Policy(_) | Command::Sandbox(_) | Command::Completions(_) | Command::Man(_) => {
            StateDirUse::None
        }
    }
}

/// The commands that keep a full debug log in the state dir, by the log's name.
fn log_name(command: &Command) -> Option<&'static str> {
    match command {
        Command::Plan(_) => Some("plan"),
        Command::Apply(_) => Some("apply"),
        Command::Rollback(_) => Some("rollback"),
        Command::Rehearse(_) => Some("rehearse"),
        _ => None,
    }
}

fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Status => journal_cmds::status(g),
        Command::History => journal_cmds::history(g),
        Command::Policy(args) => policy_cmd::run(args, g),
        Command::Sandbox(args) => runtime()?.block_on(sandbox_cmd::run(args, g)),
        Command::Plan(args) => runtime()?.block_on(plan_cmd::run(args, g)),
        Command::Apply(args) => runtime()?.block_on(apply_cmd::apply(args, g)),
        Command::Rollback(args) => runtime()?.block_on(apply_cmd::rollback(args, g)),
        Command::Check(args) => runtime()?.block_on(check_cmd::run(args, g)),
        Command::Rehearse(args) => runtime()?.block_on(rehearse_cmd::run(args, g)),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

/// Die quietly when stdout is a closed pipe (`calico-migrate history | head`),
/// as other Unix tools do, instead of panicking in `println!`.
fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A tokio runtime for the async subcommands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Print an error chain as one paragraph: the cause first, then the context.
pub fn report_error(err: &anyhow::Error) {
    let mut msg = String::from("error: ");
    msg.push_str(&err.to_string());
    for cause in err.chain().skip(1) {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
    }
    eprintln!("{msg}");
}
