//! `rpcbind-proxy generate`: man pages and shell completions, made from the
//! command-line definition itself so that they never drift from it. Hidden
//! from `--help`; packaging (scripts/build-deb) runs it on the release
//! binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use thiserror::Error;

use crate::cli::{Cli, GenerateArgs, What};

/// The name the man pages and completions are written for.
const BIN: &str = "rpcbind-proxy";

/// Why generation failed; one line naming the path.
#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("cannot create directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entry point of the subcommand: prints the error as one line and maps it
/// to the exit status, like every other subcommand.
pub fn main(args: GenerateArgs) -> ExitCode {
    match run(args) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{BIN}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes what was asked for; returns the files written.
pub fn run(args: GenerateArgs) -> Result<Vec<PathBuf>, GenerateError> {
    match args.what {
        What::Man { dir } => man_pages(&dir),
        What::Completions { dir } => completions(&dir),
    }
}

fn create_dir(dir: &Path) -> Result<(), GenerateError> {
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::Dir {
        path: dir.to_owned(),
        source,
    })
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, GenerateError> {
    match std::fs::write(&path, bytes) {
        Ok(()) => Ok(path),
        Err(source) => Err(GenerateError::Write { path, source }),
    }
}

/// One page for the program and one for every visible subcommand (at any
/// depth), named as clap_mangen names them: rpcbind-proxy.1,
/// rpcbind-proxy-serve.1, ... Hidden subcommands (this one) get none.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    create_dir(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Fills in each subcommand's display name (rpcbind-proxy-serve) and the
    // inherited version.
    cmd.build();
    let mut written = Vec::new();
    page(cmd, dir, &mut written)?;
    Ok(written)
}

fn page(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<(), GenerateError> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut roff = Vec::new();
    man.render(&mut roff)
        .map_err(|source| GenerateError::Write {
            path: path.clone(),
            source,
        })?;
    written.push(write(path, &roff)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), dir, written)?;
    }
    Ok(())
}

/// bash, zsh and fish completion scripts, under the file names each shell's
/// generator chooses.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    create_dir(dir)?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible_command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut script);
        let name = clap_complete::Generator::file_name(&shell, BIN);
        written.push(write(dir.join(name), &script)?);
    }
    Ok(written)
}

/// The command line as users see it. The completion generators, unlike the
/// man page renderer, offer hidden subcommands too; clap cannot remove a
/// subcommand, so the top level is rebuilt from the visible ones.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}
