//! `completions SHELL` and `man [SUBCOMMAND]`: shell completion scripts and roff
//! man pages generated from the clap definitions, so they never drift from the
//! flags the binary really takes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

/// The binary's name as users type it.
const BIN: &str = "calico-migrate";

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    calico-migrate completions bash > /etc/bash_completion.d/calico-migrate\n  \
    calico-migrate completions zsh > \"${fpath[1]}/_calico-migrate\"\n  \
    calico-migrate completions fish > ~/.config/fish/completions/calico-migrate.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionShell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Self::Bash => clap_complete::Shell::Bash,
            Self::Zsh => clap_complete::Shell::Zsh,
            Self::Fish => clap_complete::Shell::Fish,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    calico-migrate man | man -l -\n  \
    calico-migrate man > /usr/local/share/man/man1/calico-migrate.1\n  \
    calico-migrate man plan > /usr/local/share/man/man1/calico-migrate-plan.1")]
pub struct ManArgs {
    /// Print the page of this subcommand (calico-migrate-SUBCOMMAND(1)) instead of the main page.
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

/// Write the completion script for `shell` to `out`.
pub fn write_completions(shell: CompletionShell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, BIN, &mut buf);
    out.write_all(&buf)
        .context("cannot write the completion script to stdout")
}

/// Write the roff man page of the whole tool, or of one subcommand, to `out`.
pub fn write_man(subcommand: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut root = Cli::command();
    // Building propagates global flags (--kubeconfig, -o, ...) into every subcommand.
    root.build();
    let page = match subcommand {
        None => root,
        Some(name) => {
            let names: Vec<String> = root
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name().to_string())
                .collect();
            let sub = root.find_subcommand(name).cloned().with_context(|| {
                format!(
                    "no subcommand \"{name}\" to print a man page for; choose one of: {}",
                    names.join(", ")
                )
            })?;
            // After build() the subcommand carries display name calico-migrate-plan (the
            // page title, as git names its pages) and bin name `calico-migrate plan`.
            sub
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual("calico-migrate manual")
        .render(&mut buf)
        .context("cannot render the man page")?;
    out.write_all(&buf)
        .context("cannot write the man page to stdout")
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    write_completions(args.shell, &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    write_man(args.subcommand.as_deref(), &mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf)
            .map(|()| String::from_utf8_lossy(&buf).into_owned())
            .unwrap_or_else(|e| format!("ERROR {e:#}"))
    }

    #[test]
    fn every_shell_gets_a_script_naming_subcommands_and_global_flags() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let s = text(|b| write_completions(shell, b));
            assert!(s.contains("apply"), "{shell:?}: {s}");
            assert!(s.contains("kubeconfig"), "{shell:?}");
        }
    }

    #[test]
    fn a_subcommand_page_shows_its_own_and_the_global_flags() {
        let s = text(|b| write_man(Some("plan"), b));
        assert!(s.contains(".TH calico-migrate-plan 1"), "{s}");
        assert!(s.contains("kubeconfig"), "{s}");
    }

    #[test]
    fn an_unknown_subcommand_is_refused_with_the_choices() {
        let s = text(|b| write_man(Some("aply"), b));
        assert!(s.starts_with("ERROR") && s.contains("\"aply\""), "{s}");
        assert!(s.contains("apply") && s.contains("rollback"), "{s}");
    }
}
