//! Command line: one module per subcommand, and `dispatch`, which hands
//! each to its module in one line. Errors from the admin's input exit with
//! code 2, failures of the system with code 1; both print one line.

mod args;
mod check_config;
mod check_pins;
mod client;
pub mod doctor;
mod explain;
pub mod failure;
mod generate;
mod lists;
mod reload;
mod run;
pub mod schemas;
mod status;
mod unload;
pub mod views;

use std::path::Path;

pub use self::{
    args::{AllowOp, Cli, Cmd, DenyOp, ReserveOp, RunArgs, Shell, SocketArg},
    failure::Failure,
};
use crate::{policy::file, protocol::Request};

pub fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Run(a) => run::run(a),
        Cmd::Status { json, socket } => status::status(&socket, json),
        Cmd::Unload { pin_dir, socket } => unload::unload(&pin_dir, &socket),
        Cmd::Allow { op } => lists::allow(op),
        Cmd::Deny { op } => lists::deny(op),
        Cmd::Reserve { op } => lists::reserve(op),
        Cmd::Reload { socket } => reload::reload(&socket.socket),
        Cmd::CheckConfig { file } => {
            check_config::check_config(file.as_deref().unwrap_or(Path::new(file::DEFAULT_CONFIG)))
        }
        Cmd::Completions { shell } => {
            generate::print_completions(shell);
            Ok(())
        }
        Cmd::GenerateMan { out } => generate::generate_man(&out),
        Cmd::GenerateSchemas { out, check } => schemas::main(&out, check),
        Cmd::CheckPins { pin_dir, layout, print_layout } => {
            check_pins::check_pins(&pin_dir, layout.as_deref(), print_layout)
        }
        Cmd::Doctor(a) => doctor::main(&a),
        Cmd::Explain { address, service, json, socket } => {
            explain::explain(&socket.socket, &Request::Explain { address, service }, json)
        }
        Cmd::Top { service, n, json, watch, socket } => {
            status::top(&socket, &Request::Top { service, limit: n }, json, watch)
        }
    }
}
