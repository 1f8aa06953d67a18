//! Output formats shared by every subcommand.

use clap::ValueEnum;

/// Choices for `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
    /// Markdown, for change tickets (plan, rehearse).
    Markdown,
    /// JUnit XML (check).
    Junit,
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}
