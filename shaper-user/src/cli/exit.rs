//! `shaper`'s exit status: what each code means (shown by `--help`), and the
//! code an error gets, from its type.

use shaper_user::{control::client::ClientError, supervise::SuperviseError};

/// An invalid config, a refused request, any other failure.
pub(crate) const FAILED: u8 = 1;
/// The daemon cannot be reached: no control socket, connection refused, no answer.
pub(crate) const UNREACHABLE: u8 = 3;

/// The exit codes, for `shaper --help` (2 is clap's own for usage errors).
pub(crate) const HELP: &str = "\
Exit status:
  0  success
  1  invalid or refused: a config that does not validate, a reload or set the daemon refused, any other failure
  2  usage: an unknown command or option, a missing or malformed argument
  3  the daemon cannot be reached: no control socket, connection refused, no answer";

/// The exit code of a command that failed with `error`.
pub(crate) fn code(error: &anyhow::Error) -> u8 {
    let unreachable = error.chain().any(|e| {
        e.downcast_ref::<ClientError>().is_some_and(ClientError::is_unreachable)
            || e.downcast_ref::<SuperviseError>().is_some_and(SuperviseError::is_unreachable)
    });
    if unreachable {
        UNREACHABLE
    } else {
        FAILED
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn connect_error() -> ClientError {
        ClientError::Connect {
            path: PathBuf::from("/run/shaper/shaper.sock"),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    #[test]
    fn an_absent_daemon_is_3_and_a_refusal_is_1() {
        assert_eq!(code(&connect_error().into()), UNREACHABLE);
        let closed = ClientError::Closed { path: PathBuf::from("/s") };
        assert_eq!(code(&anyhow::Error::from(closed).context("reloading")), UNREACHABLE);
        assert_eq!(code(&SuperviseError::Client(connect_error()).into()), UNREACHABLE);
        let refused = ClientError::Refused("t.toml:3:8: bad".into());
        assert_eq!(code(&refused.into()), FAILED);
        assert_eq!(code(&SuperviseError::AlreadyRunning(7).into()), FAILED);
        assert_eq!(code(&anyhow::anyhow!("anything else")), FAILED);
    }
}
