//! The manual, generated from the command's clap definition so that it never
//! drifts from `--help`: man pages (`shaper.8`, and `shaper-VERB.8` for
//! each verb) and shell completion scripts. `shaper man DIR` and `shaper
//! completions SHELL` call these; `cargo xtask install` installs their output.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

pub use clap_complete::Shell;

/// Section 8: system administration commands and daemons.
pub const SECTION: &str = "8";

#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the completion script")]
    Output(#[source] io::Error),
}

/// Writes `NAME.8` for the command and `NAME-VERB.8` for each verb that
/// `--help` lists (hidden verbs and `help` have none) into `dir`, which must
/// exist. Returns the files written, the command's page first.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ManualError> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives each verb its display name ("shaper-stop"), which names its page.
    cmd.build();
    let source = format!("{} {}", cmd.get_name(), cmd.get_version().unwrap_or_default());
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    pages
        .into_iter()
        .map(|page| {
            let man = clap_mangen::Man::new(page)
                .section(SECTION)
                .source(source.clone())
                .manual("System Manager's Manual");
            let path = dir.join(man.get_filename());
            let mut text = Vec::new();
            man.render(&mut text)
                .and_then(|()| fs::write(&path, text))
                .map_err(|source| ManualError::Write { path: path.clone(), source })?;
            Ok(path)
        })
        .collect()
}

/// The completion script of `cmd` for `shell`, written to `out` (the script
/// is built whole first, so a closed pipe is an error, never a panic).
pub fn write_completions(
    mut cmd: clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> Result<(), ManualError> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script).and_then(|()| out.flush()).map_err(ManualError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("tool")
            .version("1.2.3")
            .about("Does things")
            .subcommand(clap::Command::new("start").about("Starts it").arg(clap::arg!(--config <FILE>)))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_verb_in_section_8() {
        let dir = std::env::temp_dir().join(format!("shaper-manual-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pages = write_man_pages(command(), &dir).unwrap();
        let names: Vec<String> =
            pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tool.8", "tool-start.8"]);
        let start = fs::read_to_string(dir.join("tool-start.8")).unwrap();
        assert!(start.contains("\n.TH tool-start 8  \"tool 1.2.3\""), "{start}");
        assert!(start.contains("\\-\\-config"), "{start}");
        let main = fs::read_to_string(dir.join("tool.8")).unwrap();
        assert!(main.contains("tool\\-start(8)") && !main.contains("secret"), "{main}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_name_the_verbs() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completions(command(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("start") && text.contains("config"), "{shell}: {text}");
        }
    }
}
