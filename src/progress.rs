//! What the person running the migration follows: [`say`] lines (a step started, a node
//! verified, a finding) and the progress of long waits (nodes migrated of N, probes done
//! of N), a tracing span that tracing-indicatif draws as a bar when the CLI installed
//! its layer (stderr is a terminal, no `--no-progress`); without the layer the bar calls
//! do nothing. Both are tracing events of this module's target, which the CLI shows on
//! a terminal when it hides every other info line (src/cli/telemetry.rs).

use indicatif::ProgressStyle;
use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;

/// One line for the person watching: a step started or finished, a node verified, a
/// finding. Keep it short: it is one of a few dozen lines of a whole migration.
pub fn say(line: impl std::fmt::Display) {
    tracing::info!("{line}");
}

/// A bar of `len` `unit`s for `what`; enter it (or `.instrument(bar)` a future) for the
/// duration of the wait.
pub fn bar(what: &str, len: u64, unit: &str) -> Span {
    let span = tracing::info_span!("progress", what = %what);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})"
    )) {
        span.pb_set_style(&style);
    }
    span.pb_set_length(len);
    span.pb_set_message(what);
    span
}

/// Move the current bar (the innermost `bar` span entered) to `pos`.
pub fn set(pos: u64) {
    Span::current().pb_set_position(pos);
}

/// Advance the current bar by one.
pub fn inc() {
    Span::current().pb_inc(1);
}
