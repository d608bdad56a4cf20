//! `limiter explain`: how the running policy decides for one address, as
//! the daemon read it from the kernel's maps; JSON or the text of `views`.

use std::path::Path;

use super::{
    client::{client, print_json},
    failure::Failure,
    views,
};
use crate::protocol::{ExplainReply, Request};

/// `limiter explain ADDRESS`: JSON or a few lines for an admin.
pub(super) fn explain(socket: &Path, req: &Request, json: bool) -> Result<(), Failure> {
    let reply: ExplainReply = client(socket, req)?;
    if json {
        return print_json(&reply);
    }
    print!("{}", views::explain(&reply));
    Ok(())
}
