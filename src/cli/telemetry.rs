//! Logging (tracing) and progress bars (indicatif through tracing-indicatif, so log
//! lines never garble a bar).
//!
//! Three sinks, each with its own filter:
//! - the terminal. On a terminal at the default verbosity it shows what a person in a
//!   maintenance window follows, as terraform and kubeadm do: one short line per step,
//!   per node verified and per finding (the `progress::say` lines), warnings and errors,
//!   and a bar for long waits; no timestamps, no span fields. With `-v` (or when stderr
//!   is not a terminal: CI and Job logs) every line is timestamped and carries its
//!   spans, as before.
//! - the log file: for the commands that change or rehearse a cluster, the full debug
//!   log is always written to `<state-dir>/logs/` (0600, like the rest of the state
//!   dir), and its path printed at the end.
//! - the bars, only for the `progress` spans.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{Event, Level, Subscriber};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::GlobalOpts;
use crate::engine::state_dir::{FILE_MODE, create_private_dir};

/// Where `progress::say` lines come from (the module's path is its events' target).
const PROGRESS_TARGET: &str = "calico_migrate::progress";
/// Debug logs kept per state dir; older ones are removed when a new one starts.
const LOGS_KEPT: usize = 20;

/// Whether progress bars may be drawn: a terminal on stderr and no `--no-progress`.
pub fn progress_enabled(g: &GlobalOpts) -> bool {
    !g.no_progress && !g.quiet && std::io::stderr().is_terminal()
}

/// The terminal's filter. `RUST_LOG` overrides it. Other crates' lines (kube's own
/// "failed with error" for a refused connection, say) only from `-vv` on: the tool's
/// error already says what happened.
fn terminal_filter(g: &GlobalOpts, long_running: bool, concise: bool) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    let directives = match (g.quiet, g.verbose) {
        (true, _) => "calico_migrate=error".to_string(),
        (false, 0) if concise => format!("{PROGRESS_TARGET}=info,calico_migrate=warn"),
        (false, 0) if long_running => "calico_migrate=info".to_string(),
        (false, 0) => "calico_migrate=warn".to_string(),
        (false, 1) => "calico_migrate=info".to_string(),
        (false, 2) => "calico_migrate=debug,warn".to_string(),
        (false, _) => "calico_migrate=trace,info".to_string(),
    };
    EnvFilter::new(directives)
}

/// Install the global subscriber. `log_file` (for the commands that keep a debug log)
/// is created private in the state dir at its first line, so a command refused before
/// it does anything leaves no log behind; the returned handle tells whether it was.
pub fn init(g: &GlobalOpts, long_running: bool, log_file: Option<&Path>) -> Option<DebugLog> {
    let terminal = std::io::stderr().is_terminal();
    let concise = terminal && g.verbose == 0 && !g.quiet;
    let log = log_file.map(|path| DebugLog {
        inner: Arc::new(LazyFile {
            path: path.to_path_buf(),
            file: Mutex::new(None),
        }),
    });
    let file_layer = log.clone().map(|log| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || log.clone())
            .with_filter(EnvFilter::new("calico_migrate=debug,info"))
    });
    let filter = terminal_filter(g, long_running, concise);
    let (bars, writer) = if progress_enabled(g) {
        let bars = IndicatifLayer::new();
        let writer = bars.get_stderr_writer();
        (Some(bars), Some(writer))
    } else {
        (None, None)
    };
    let make_writer = move || -> Box<dyn std::io::Write> {
        match &writer {
            Some(w) => Box::new(tracing_subscriber::fmt::MakeWriter::make_writer(w)),
            None => Box::new(std::io::stderr()),
        }
    };
    let screen = if concise {
        tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_writer(make_writer)
            .event_format(Concise)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_target(false)
            .with_writer(make_writer)
            .with_filter(filter)
            .boxed()
    };
    let bars =
        bars.map(|b| b.with_filter(Targets::new().with_target(PROGRESS_TARGET, Level::INFO)));
    let _ = tracing_subscriber::registry()
        .with(screen)
        .with(file_layer)
        .with(bars)
        .try_init();
    log
}

/// The debug log of this run: a file in the state dir, opened at its first line.
#[derive(Clone)]
pub struct DebugLog {
    inner: Arc<LazyFile>,
}

struct LazyFile {
    path: PathBuf,
    /// `None` until the first line; `Some(None)` once opening it failed (said once).
    file: Mutex<Option<Option<std::fs::File>>>,
}

impl DebugLog {
    /// The file's path, if anything was written to it.
    pub fn written(&self) -> Option<&Path> {
        let opened = self
            .inner
            .file
            .lock()
            .is_ok_and(|f| f.as_ref().is_some_and(Option::is_some));
        opened.then_some(self.inner.path.as_path())
    }

    /// Add `line` to the log if it exists (the error a run ended with), not to the screen.
    pub fn append_if_written(&self, line: &str) {
        if self.written().is_some() {
            let mut w = self.clone();
            let _ = writeln!(w, "{line}");
        }
    }
}

impl std::io::Write for DebugLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut slot = self
            .inner
            .file
            .lock()
            .map_err(|_| std::io::Error::other("the debug log's lock is poisoned"))?;
        let file = slot.get_or_insert_with(|| open_log(&self.inner.path));
        match file {
            Some(f) => f.write(buf),
            // Going on without the log: the terminal said so once.
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The debug log's path for this run of `command`: `<state-dir>/logs/<command>-<UTC
/// time>-<pid>.log`, so runs never share a file and sort by time.
pub fn log_path(state_dir: &Path, command: &str) -> PathBuf {
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    state_dir
        .join("logs")
        .join(format!("{command}-{now}-{}.log", std::process::id()))
}

/// Create the log file (0600, its directory 0700), removing the oldest logs beyond
/// [`LOGS_KEPT`]. A log that cannot be opened is not worth failing the command for:
/// the terminal says so and the run goes on.
fn open_log(path: &Path) -> Option<std::fs::File> {
    let dir = path.parent()?;
    let opened = create_private_dir(dir).and_then(|()| {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(path)
    });
    match opened {
        Ok(file) => {
            prune_logs(dir);
            Some(file)
        }
        Err(e) => {
            eprintln!(
                "warning: cannot write the debug log {}: {e}; going on without it",
                path.display()
            );
            None
        }
    }
}

fn prune_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    logs.sort();
    let excess = logs.len().saturating_sub(LOGS_KEPT);
    for (_, old) in logs.into_iter().take(excess) {
        let _ = std::fs::remove_file(old);
    }
}

/// A terminal line: the message alone, `warning:`/`error:` before what needs attention.
struct Concise;

impl<S, N> FormatEvent<S, N> for Concise
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn the_log_is_created_at_its_first_line_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = log_path(dir.path(), "plan");
        let mut log = DebugLog {
            inner: Arc::new(LazyFile {
                path: path.clone(),
                file: Mutex::new(None),
            }),
        };
        log.append_if_written("not yet");
        assert_eq!(log.written(), None);
        assert!(!path.exists());
        writeln!(log, "first").unwrap_or_else(|e| panic!("{e}"));
        log.append_if_written("error: the end");
        assert_eq!(log.written(), Some(path.as_path()));
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("first\nerror: the end\n")
        );
        assert_eq!(file_mode(&path), 0o600);
    }

    #[test]
    fn log_paths_sort_by_time_and_old_logs_are_pruned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = log_path(dir.path(), "apply");
        assert!(p.starts_with(dir.path().join("logs")));
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(name.is_some_and(|n| n.starts_with("apply-20") && n.ends_with(".log")));
        let logs = dir.path().join("logs");
        create_private_dir(&logs).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..LOGS_KEPT + 3 {
            std::fs::write(logs.join(format!("old-{i:02}.log")), b"x")
                .unwrap_or_else(|e| panic!("{e}"));
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i as u64);
            std::fs::File::options()
                .write(true)
                .open(logs.join(format!("old-{i:02}.log")))
                .and_then(|f| f.set_modified(t))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let file = open_log(&p);
        assert!(file.is_some());
        let left: Vec<String> = std::fs::read_dir(&logs)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), LOGS_KEPT, "{left:?}");
        assert!(
            left.iter().any(|n| n.starts_with("apply-")),
            "the new log is kept"
        );
        assert!(
            !left.iter().any(|n| n == "old-00.log"),
            "the oldest went first"
        );
    }
}
