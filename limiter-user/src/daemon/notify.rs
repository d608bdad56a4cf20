//! Telling systemd (`Type=notify`) what the daemon is doing.

use log::debug;
use sd_notify::NotifyState;

/// Tells systemd, when run by it (`NOTIFY_SOCKET`); nothing otherwise.
pub(crate) fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}
