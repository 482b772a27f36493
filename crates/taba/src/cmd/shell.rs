//! Shell integration generated from the command-line definition itself:
//! completion scripts (`taba completion bash|zsh|fish|elvish|powershell`)
//! and man pages (`taba man --dir DIR`, one page per command), so neither
//! can drift from the flags `taba` really takes.

use anyhow::Context;
use clap::CommandFactory;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `taba completion SHELL`.
#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `taba man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (`taba.1`, `taba-job.1`,
    /// `taba-job-run.1` ...); created if missing. Without it, the page of
    /// `taba` itself goes to stdout.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Writes the completion script of `shell` to stdout.
pub fn completion(args: CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "taba", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages of every visible command.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = crate::Cli::command();
    let Some(dir) = args.dir else {
        clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = write_pages(cmd, "taba", &dir)?;
    println!("{written} man pages in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The page of `cmd` (whose command line is `bin`, e.g. `taba job run`; its
/// page `taba-job-run.1`) and those of its visible subcommands,
/// recursively; returns how many were written.
fn write_pages(cmd: clap::Command, bin: &str, dir: &Path) -> anyhow::Result<usize> {
    let name = bin.replace(' ', "-");
    let cmd = cmd.display_name(name.clone()).bin_name(bin.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written += write_pages(sub.clone(), &format!("{bin} {}", sub.get_name()), dir)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_pages(crate::Cli::command(), "taba", dir.path()).unwrap();
        assert!(n > 50, "{n} pages");
        for page in [
            "taba.1",
            "taba-job-run.1",
            "taba-alloc-migrate.1",
            "taba-image-pull.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{page}: {text}"
            );
        }
        assert!(!dir.path().join("taba-shim.1").exists());
        let run = std::fs::read_to_string(dir.path().join("taba-job-run.1")).unwrap();
        assert!(run.contains("detach"), "{run}");
    }
}
