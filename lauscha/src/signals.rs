//! SIGINT and SIGTERM: the first asks for a graceful stop, a second one means "now".

use anyhow::Context;
use tracing::warn;

/// SIGINT and SIGTERM as they come. The first asks for a graceful stop (NBD sessions
/// end and give their leases back, which can take up to `NBD_DRAIN_TIMEOUT`); a second
/// one during it means "now" (see [`StopSignals::exit_on_next`]). The handlers are
/// installed once, so no signal is missed between two waits.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers: from here on SIGINT and SIGTERM no longer end the process
    /// by themselves.
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Kills the process (SIGKILL) at the next signal, without waiting for the graceful
    /// stop under way. That loses nothing acknowledged (metadata, the volume journals and
    /// the shards are durable when a write is answered, as after a crash); what is cut
    /// short is the journal merge at detach (replayed at the next attach) and the lease
    /// release (a lease expires within 10 s).
    pub fn exit_on_next(mut self) {
        tokio::spawn(async move {
            self.next().await;
            warn!(
                "second stop signal: exiting now, without waiting for the graceful stop (nothing acknowledged is lost; leases of attached volumes expire in 10 s)"
            );
            // SIGKILL, not `exit`: exit handlers would tear down RocksDB's static state
            // under its background threads (a crash of its own). A kill is the crash the
            // design is built for.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        });
    }
}
