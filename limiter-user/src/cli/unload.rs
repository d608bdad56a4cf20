//! `limiter unload`: removes the pins a stopped daemon left, which stops
//! enforcement.

use std::path::Path;

use super::failure::Failure;

/// Removes what `run` pinned under `pin_dir`; refused while a daemon
/// answers on `socket`.
pub(super) fn unload(pin_dir: &Path, socket: &Path) -> Result<(), Failure> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Failure::bad_input(format!(
            "a limiter daemon is running on {}: stop it first (systemctl stop limiter)",
            socket.display()
        )));
    }
    let removed = crate::kernel::pins::unload(pin_dir)
        .map_err(|e| Failure::system(format!("removing {}: {e}", pin_dir.display())))?;
    if removed.is_empty() {
        println!("nothing pinned under {}", pin_dir.display());
    } else {
        println!("removed {} pins under {}; enforcement stopped", removed.len(), pin_dir.display());
    }
    Ok(())
}
