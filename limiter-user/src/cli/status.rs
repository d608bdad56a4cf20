//! `limiter status` and `limiter top`: the daemon's replies as JSON or as
//! the tables of `views`.

use std::path::Path;

use super::{
    client::{client, print_json},
    failure::Failure,
    views,
};
use crate::protocol::{Request, StatusReply, TopReply};

/// `limiter status`: JSON or the table.
pub(super) fn status(socket: &Path, json: bool) -> Result<(), Failure> {
    let status: StatusReply = client(socket, &Request::Status)?;
    if json {
        return print_json(&status);
    }
    print!("{}", views::status(&status));
    Ok(())
}

/// `limiter top`: JSON, one table, or a table redrawn every `watch` seconds.
pub(super) fn top(socket: &Path, req: &Request, json: bool, watch: Option<u64>) -> Result<(), Failure> {
    if json {
        return print_json(&client::<TopReply>(socket, req)?);
    }
    let Some(secs) = watch else {
        print!("{}", views::top(&client(socket, req)?, &views::local_time()));
        return Ok(());
    };
    loop {
        let text = views::top(&client(socket, req)?, &views::local_time());
        // Home the cursor and clear the screen, then draw.
        print!("\x1b[H\x1b[2J{text}");
        std::io::Write::flush(&mut std::io::stdout()).map_err(Failure::system)?;
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}
