//! Logging (tracing) and progress bars (indicatif through tracing-indicatif, so
//! log lines never garble a bar).

use std::io::IsTerminal;

use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::GlobalOpts;

/// Whether progress bars may be drawn: a terminal on stderr and no `--no-progress`.
pub fn progress_enabled(g: &GlobalOpts) -> bool {
    !g.no_progress && !g.quiet && std::io::stderr().is_terminal()
}

/// Install the global subscriber. `RUST_LOG` overrides the level from -v/-q.
/// Long-running commands (apply, rollback, rehearse) log progress at info by default.
pub fn init(g: &GlobalOpts, long_running: bool) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) if long_running => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("calico_migrate={level},warn")));
    let ansi = std::io::stderr().is_terminal();
    if progress_enabled(g) {
        let bars = IndicatifLayer::new();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_target(false)
            .with_writer(bars.get_stderr_writer());
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(bars)
            .try_init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_target(false)
            .with_writer(std::io::stderr);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
    }
}
