//! The system's OpenSSH client: `ssh` runs a script on a host, `scp` copies
//! a file there. No protocol of our own, and the user's ssh configuration
//! (~/.ssh/config, agent, known hosts) applies.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::target::Target;

/// Seconds ssh waits for a host to answer: an unreachable host is reported
/// well within 10 s.
pub(crate) const CONNECT_TIMEOUT_S: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SshError {
    #[error("cannot run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// ssh itself failed (exit 255): no connection, or it was refused.
    #[error("{0}")]
    Unreachable(String),
    #[error("copying {} to {remote}: {detail}", local.display())]
    Upload { local: PathBuf, remote: String, detail: String },
}

/// What a remote script printed and how it exited.
#[derive(Debug)]
pub(crate) struct Ran {
    pub ok: bool,
    /// The script's exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// How to reach one host.
#[derive(Clone, Debug)]
pub(crate) struct Ssh {
    pub target: Target,
    pub identity: Option<PathBuf>,
    /// `KEY=VALUE` pairs given with `--ssh-option`.
    pub options: Vec<String>,
    /// The socket of a master connection the host's commands share (one
    /// handshake per host instead of one per command); [`Ssh::close`] ends it.
    pub control: Option<PathBuf>,
}

impl Ssh {
    /// `-o` options, the user's first: ssh keeps the first value it reads for
    /// an option, so `--ssh-option ConnectTimeout=20` wins over ours.
    fn common_args(&self) -> Vec<String> {
        let mut ours = vec![
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
            "ServerAliveInterval=15".to_string(),
        ];
        if let Some(socket) = &self.control {
            // The master outlives a deploy that dies by at most 30 idle seconds.
            ours.extend([
                "ControlMaster=auto".to_string(),
                format!("ControlPath={}", socket.display()),
                "ControlPersist=30".to_string(),
            ]);
        }
        let mut args = Vec::new();
        for option in self.options.iter().chain(&ours) {
            args.extend(["-o".to_string(), option.clone()]);
        }
        if let Some(key) = &self.identity {
            args.extend(["-i".to_string(), key.display().to_string()]);
        }
        args
    }

    /// Runs `script` with `sh` on the host (whatever the user's login shell).
    pub fn run(&self, script: &str) -> Result<Ran, SshError> {
        let mut cmd = Command::new("ssh");
        cmd.args(self.common_args());
        if let Some(port) = self.target.port {
            cmd.args(["-p", &port.to_string()]);
        }
        cmd.arg(self.target.ssh_destination()).arg(format!("sh -c {}", quote(script)));
        let out =
            cmd.stdin(Stdio::null()).output().map_err(|source| SshError::Spawn { program: "ssh", source })?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(255) {
            return Err(SshError::Unreachable(last_line(&stderr)));
        }
        Ok(Ran {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        })
    }

    /// Copies `local` to `remote` (a path on the host).
    pub fn upload(&self, local: &Path, remote: &str) -> Result<(), SshError> {
        let mut cmd = Command::new("scp");
        cmd.arg("-q").args(self.common_args());
        if let Some(port) = self.target.port {
            cmd.args(["-P", &port.to_string()]);
        }
        cmd.arg(local).arg(self.target.scp_destination(remote));
        let out =
            cmd.stdin(Stdio::null()).output().map_err(|source| SshError::Spawn { program: "scp", source })?;
        if out.status.success() {
            return Ok(());
        }
        let detail = last_line(&String::from_utf8_lossy(&out.stderr));
        if detail.starts_with("ssh:") || detail.contains("Connection closed") {
            return Err(SshError::Unreachable(detail));
        }
        Err(SshError::Upload { local: local.to_path_buf(), remote: remote.to_string(), detail })
    }
}

impl Ssh {
    /// Ends the master connection, if one was opened.
    pub fn close(&self) {
        let Some(socket) = self.control.as_ref().filter(|s| s.exists()) else { return };
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit"])
            .arg(self.target.ssh_destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The last line that says something (ssh's reason comes last).
fn last_line(text: &str) -> String {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("ssh failed").to_string()
}

/// `s` as one word for a POSIX shell.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "two words", "it's", "$HOME `x` \"q\" \\", ""] {
            let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(s))).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }

    #[test]
    fn the_users_options_come_before_ours_and_the_key_follows() {
        let ssh = Ssh {
            target: "root@h1:2222".parse().unwrap(),
            identity: Some("/k/id".into()),
            options: vec!["ConnectTimeout=20".into()],
            control: None,
        };
        assert_eq!(
            ssh.common_args().join(" "),
            "-o ConnectTimeout=20 -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=15 -i /k/id"
        );
        let shared = Ssh { control: Some("/t/cm-0".into()), ..ssh };
        assert!(shared
            .common_args()
            .join(" ")
            .contains("-o ControlMaster=auto -o ControlPath=/t/cm-0 -o ControlPersist=30 -i /k/id"));
    }

    #[test]
    fn the_reason_is_the_last_line() {
        assert_eq!(
            last_line("Warning: x\nssh: connect to host h port 22: Connection timed out\n\n"),
            "ssh: connect to host h port 22: Connection timed out"
        );
        assert_eq!(last_line(""), "ssh failed");
    }
}
