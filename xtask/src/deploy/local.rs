//! What goes to the hosts, from this machine: the binary (built once), the
//! systemd unit, and each host's config file.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// In a `--config` directory: the config of a host without a file of its own.
pub(crate) const DEFAULT_CONFIG: &str = "default.toml";

#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run sha256sum")]
    Hash(#[source] std::io::Error),
    #[error("sha256sum failed on {0}")]
    HashFailed(String),
    #[error("no config for {host}: neither {} nor {} exists", own.display(), fallback.display())]
    NoConfig { host: String, own: PathBuf, fallback: PathBuf },
}

/// A file to install, with its SHA-256 (hex) to compare with the host's.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    /// The file on this machine (`scp` copies it).
    pub path: PathBuf,
    pub sha256: String,
}

impl Payload {
    pub fn from_file(path: &Path) -> Result<Self, LocalError> {
        let sha256 = sha256(Stdio::from(open(path)?), &path.display().to_string())?;
        Ok(Self { path: path.to_path_buf(), sha256 })
    }
}

/// The binary to deploy.
#[derive(Clone, Debug)]
pub(crate) struct Release {
    pub payload: Payload,
    /// What `shaper --version` prints here ("?" if it does not run here).
    pub version: String,
}

impl Release {
    pub fn new(path: &Path) -> Result<Self, LocalError> {
        let payload = Payload::from_file(path)?;
        let version = Command::new(path)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".to_string());
        Ok(Self { payload, version })
    }
}

fn open(path: &Path) -> Result<std::fs::File, LocalError> {
    std::fs::File::open(path).map_err(|source| LocalError::Read { path: path.to_path_buf(), source })
}

/// SHA-256 of what `input` gives, hex (coreutils' sha256sum, as on the hosts).
fn sha256(input: Stdio, what: &str) -> Result<String, LocalError> {
    let out = Command::new("sha256sum").stdin(input).output().map_err(LocalError::Hash)?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() == 64 => Ok(hex.to_string()),
        _ => Err(LocalError::HashFailed(what.to_string())),
    }
}

/// Writes `bytes` to a file in `dir` (the unit rendered for one host) and
/// returns it as a payload.
pub(crate) fn stage(dir: &Path, name: &str, bytes: &[u8]) -> Result<Payload, LocalError> {
    let path = dir.join(name);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::File::create(&path)?.write_all(bytes)
    };
    write().map_err(|source| LocalError::Read { path: path.clone(), source })?;
    Payload::from_file(&path)
}

/// config/shaper.service for a host whose files live under `root` ("" for
/// the real paths): `cargo xtask install`'s unit for the prefix
/// ROOT/usr/local, with the config its commands name moved to ROOT too.
pub(crate) fn unit_for(workspace: &Path, root: &str) -> anyhow::Result<String> {
    let unit = crate::install::unit(workspace, Path::new(&format!("{root}/usr/local")))?;
    Ok(moved_config(&unit, root))
}

/// `unit` with the config path on its Exec lines under `root`.
fn moved_config(unit: &str, root: &str) -> String {
    let config = crate::install::CONFIG;
    let lines: Vec<String> = unit
        .lines()
        .map(|l| {
            if l.starts_with("Exec") {
                l.replace(config, &format!("{root}{config}"))
            } else {
                l.to_string()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

/// `--config FILE|DIR`.
#[derive(Clone, Debug)]
pub(crate) enum ConfigSource {
    File(PathBuf),
    /// `HOST.toml` per host, `default.toml` for the others.
    Dir(PathBuf),
}

impl ConfigSource {
    pub fn new(path: &Path) -> Self {
        if path.is_dir() {
            Self::Dir(path.to_path_buf())
        } else {
            Self::File(path.to_path_buf())
        }
    }

    /// The file host `name` gets.
    pub fn for_host(&self, name: &str) -> Result<PathBuf, LocalError> {
        match self {
            Self::File(path) => Ok(path.clone()),
            Self::Dir(dir) => {
                let own = dir.join(format!("{name}.toml"));
                let fallback = dir.join(DEFAULT_CONFIG);
                match (own.is_file(), fallback.is_file()) {
                    (true, _) => Ok(own),
                    (false, true) => Ok(fallback),
                    (false, false) => Err(LocalError::NoConfig { host: name.to_string(), own, fallback }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn the_unit_points_at_the_files_under_the_remote_root() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let template = std::fs::read_to_string(workspace.join("config/shaper.service")).unwrap();
        assert_eq!(unit_for(&workspace, "").unwrap(), template);
        let unit = unit_for(&workspace, "/srv/h1").unwrap();
        let exec: Vec<&str> = unit.lines().filter(|l| l.starts_with("Exec")).collect();
        assert_eq!(
            exec,
            [
                "ExecStart=/srv/h1/usr/local/bin/shaper run --config /srv/h1/etc/shaper/shaper.toml",
                "ExecReload=/srv/h1/usr/local/bin/shaper reload --config /srv/h1/etc/shaper/shaper.toml"
            ]
        );
        // Comments keep naming the real paths.
        assert_eq!(moved_config("# /etc/shaper/shaper.toml\n", "/srv"), "# /etc/shaper/shaper.toml\n");
    }

    #[test]
    fn a_host_without_a_file_of_its_own_gets_default_toml() {
        let dir = std::env::temp_dir().join(format!("xtask-deploy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = ConfigSource::new(&dir);
        let err = source.for_host("web1").unwrap_err().to_string();
        assert!(err.starts_with("no config for web1: neither "), "{err}");
        std::fs::write(dir.join("default.toml"), "").unwrap();
        std::fs::write(dir.join("web1.toml"), "").unwrap();
        assert_eq!(source.for_host("web1").unwrap(), dir.join("web1.toml"));
        assert_eq!(source.for_host("web2").unwrap(), dir.join("default.toml"));
        let file = ConfigSource::new(&dir.join("web1.toml"));
        assert_eq!(file.for_host("web2").unwrap(), dir.join("web1.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashes_are_sha256_hex() {
        let dir = std::env::temp_dir().join(format!("xtask-deploy-hash-{}", std::process::id()));
        let p = stage(&dir, "f", b"abc").unwrap();
        assert_eq!(p.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
