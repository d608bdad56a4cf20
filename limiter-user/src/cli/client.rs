//! Talking to the running daemon over its control socket: one request and
//! its reply, and how a reply's JSON and warnings are printed.

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

use super::failure::Failure;
use crate::{
    policy::lists::printable,
    protocol::{self, Request},
};

/// `--json`: the reply as the daemon's JSON, pretty, keys in alphabetical order.
pub(super) fn print_json<T: Serialize>(reply: &T) -> Result<(), Failure> {
    println!("{}", protocol::json_text(reply, true).map_err(Failure::system)?);
    Ok(())
}

/// The `warnings` of a daemon response, one `limiter: warning: ` line each
/// on stderr.
pub(super) fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("limiter: warning: {}", printable(w));
    }
}

/// Sends `req` and reads the daemon's reply as `R`, the type `req` is answered with.
pub(super) fn client<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Failure::system)?;
    rt.block_on(protocol::request(socket, req)).map_err(|e| match e {
        protocol::ClientError::NotRunning { .. } => Failure::not_running(e),
        protocol::ClientError::NotPermitted { .. } => Failure::not_permitted(e),
        protocol::ClientError::Connect { .. } | protocol::ClientError::Refused(_) => Failure::bad_input(e),
        _ => Failure::system(e),
    })
}
