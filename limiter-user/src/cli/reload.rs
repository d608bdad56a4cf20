//! `limiter reload`: the daemon re-reads its config file and says what it
//! applied.

use std::path::Path;

use super::{
    client::{client, print_warnings},
    failure::Failure,
};
use crate::{
    policy::lists::printable,
    protocol::{ReloadReply, Request},
};

/// Asks the daemon on `socket` to reload; its warnings on stderr, one line
/// on stdout.
pub(super) fn reload(socket: &Path) -> Result<(), Failure> {
    let r: ReloadReply = client(socket, &Request::Reload)?;
    print_warnings(&r.warnings);
    println!("reloaded {} ({} services)", printable(&r.reloaded), r.services);
    Ok(())
}
