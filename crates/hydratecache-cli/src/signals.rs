//! Ctrl-C (SIGINT) and SIGTERM as a clean end.

use anyhow::Result;

/// Handlers installed at once (not on first poll), so a signal that comes
/// right after `install` is not lost to the default action.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals> {
        #[cfg(unix)]
        {
            use anyhow::Context as _;
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("install the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Resolves at the next SIGINT or SIGTERM.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
