//! Which control socket a client (`status`, `reload`, `stop`, …) talks to:
//! `--socket`, else the `control_socket` of `--config`, else that of the
//! default config when it exists, else /run/shaper/shaper.sock. Configs are
//! read as plain TOML for this, so one that no longer validates (the reason
//! to ask the daemon for its `status`) still names its socket.

use std::path::{Path, PathBuf};

use anyhow::Result;
use shaper_user::{config::DEFAULT_CONTROL_SOCKET, error_chain, supervise::DaemonPaths};

/// The socket, and a warning when the default config exists but gives none.
pub(crate) fn resolve(
    socket: Option<&Path>,
    config: Option<&Path>,
    default_config: &Path,
) -> Result<(PathBuf, Option<String>)> {
    if let Some(socket) = socket {
        return Ok((socket.to_path_buf(), None));
    }
    if let Some(config) = config {
        return Ok((DaemonPaths::from_config(config)?.socket, None));
    }
    if !default_config.exists() {
        return Ok((PathBuf::from(DEFAULT_CONTROL_SOCKET), None));
    }
    match DaemonPaths::from_config(default_config) {
        Ok(paths) => Ok((paths.socket, None)),
        Err(e) => {
            let warning = format!("warning: {}; using {DEFAULT_CONTROL_SOCKET}", error_chain(&e));
            Ok((PathBuf::from(DEFAULT_CONTROL_SOCKET), Some(warning)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("shaper-socket-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const DEFAULT: &str = "/run/shaper/shaper.sock";

    #[test]
    fn the_flag_wins_then_the_config_then_the_default_config() {
        let dir = Dir::new("order");
        let given = dir.file("given.toml", "[daemon]\ncontrol_socket = \"/run/given.sock\"\n");
        let default = dir.file("default.toml", "[daemon]\ncontrol_socket = \"/run/default.sock\"\n");
        let flag = Path::new("/tmp/flag.sock");
        assert_eq!(resolve(Some(flag), Some(&given), &default).unwrap(), (flag.to_path_buf(), None));
        assert_eq!(resolve(None, Some(&given), &default).unwrap(), ("/run/given.sock".into(), None));
        assert_eq!(resolve(None, None, &default).unwrap(), ("/run/default.sock".into(), None));
        let absent = dir.0.join("absent.toml");
        assert_eq!(resolve(None, None, &absent).unwrap(), (DEFAULT.into(), None));
    }

    #[test]
    fn a_config_that_does_not_validate_still_names_its_socket() {
        let dir = Dir::new("invalid");
        let text =
            "[daemon]\ncontrol_socket = \"/run/x.sock\"\n[[class]]\nname = \"a\"\nmatch = 'rprot == 1'\n";
        let config = dir.file("c.toml", text);
        assert_eq!(resolve(None, Some(&config), Path::new("/absent")).unwrap().0, Path::new("/run/x.sock"));
        let bare = dir.file("bare.toml", "[[interface]]\nname = \"eth0\"\n");
        assert_eq!(resolve(None, None, &bare).unwrap(), (DEFAULT.into(), None));
    }

    #[test]
    fn a_broken_default_config_warns_and_a_broken_given_one_fails() {
        let dir = Dir::new("broken");
        let broken = dir.file("broken.toml", "[daemon\n");
        let (socket, warning) = resolve(None, None, &broken).unwrap();
        assert_eq!(socket, Path::new(DEFAULT));
        let why = format!(
            "{} is not TOML (invalid table header expected `.`, `]`); its [daemon] paths are unknown",
            broken.display()
        );
        assert_eq!(warning.unwrap(), format!("warning: {why}; using /run/shaper/shaper.sock"));
        let error = resolve(None, Some(&broken), Path::new("/absent")).unwrap_err();
        assert_eq!(error_chain(error.as_ref()), why);
        let missing = dir.0.join("missing.toml");
        let error = resolve(None, Some(&missing), Path::new("/absent")).unwrap_err();
        assert_eq!(
            error_chain(error.as_ref()),
            format!("cannot read {}: No such file or directory (os error 2)", missing.display())
        );
    }
}
