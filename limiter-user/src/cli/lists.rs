//! `limiter allow|deny|reserve add|del|list`: changes to the run-time
//! lists sent to the daemon, and the lists it holds printed as a table.

use std::path::Path;

use super::{
    args::{AllowOp, DenyOp, ReserveOp},
    client::{client, print_json, print_warnings},
    failure::Failure,
};
use crate::{
    policy::lists::{Cidr, printable},
    protocol::{AddedReply, Entry, ListName, ListReply, RemovedReply, Request},
};

/// `limiter allow ...`.
pub(super) fn allow(op: AllowOp) -> Result<(), Failure> {
    match op {
        AllowOp::Add { prefix, max_conn_per_source, max_conn_all_services, rate, burst, comment, force, socket } => {
            change(
                &socket.socket,
                &Request::ListAdd {
                    list: ListName::Allow,
                    prefix: prefix.to_string(),
                    service: None,
                    max_conn_per_source,
                    max_conn_all_services,
                    rate,
                    burst,
                    comment,
                    source_prefix: false,
                    force,
                },
            )
        }
        AllowOp::Del { prefix, socket } => del(&socket.socket, ListName::Allow, prefix, None, Widen::default()),
        AllowOp::List { json, socket } => show(&socket.socket, ListName::Allow, None, json),
    }
}

/// `limiter deny ...`.
pub(super) fn deny(op: DenyOp) -> Result<(), Failure> {
    match op {
        DenyOp::Add { prefix, comment, source_prefix, force, socket } => change(
            &socket.socket,
            &Request::ListAdd {
                list: ListName::Deny,
                prefix: prefix.to_string(),
                service: None,
                max_conn_per_source: None,
                max_conn_all_services: None,
                rate: None,
                burst: None,
                comment,
                source_prefix,
                force,
            },
        ),
        DenyOp::Del { prefix, source_prefix, missing_ok, socket } => {
            del(&socket.socket, ListName::Deny, prefix, None, Widen { source_prefix, missing_ok })
        }
        DenyOp::List { json, socket } => show(&socket.socket, ListName::Deny, None, json),
    }
}

/// `limiter reserve ...`.
pub(super) fn reserve(op: ReserveOp) -> Result<(), Failure> {
    match op {
        ReserveOp::Add { prefix, service, comment, socket } => change(
            &socket.socket,
            &Request::ListAdd {
                list: ListName::Reserve,
                prefix: prefix.to_string(),
                service: Some(service),
                max_conn_per_source: None,
                max_conn_all_services: None,
                rate: None,
                burst: None,
                comment,
                source_prefix: false,
                force: false,
            },
        ),
        ReserveOp::Del { prefix, service, socket } => {
            del(&socket.socket, ListName::Reserve, prefix, Some(service), Widen::default())
        }
        ReserveOp::List { service, json, socket } => show(&socket.socket, ListName::Reserve, service, json),
    }
}

/// Sends a list change and reports it in one line.
fn change(socket: &Path, req: &Request) -> Result<(), Failure> {
    let r: AddedReply = client(socket, req)?;
    let e = &r.added;
    let mut line = format!("{} {} added", r.list.as_str(), e.prefix);
    if let Some(s) = &e.service {
        line = format!("{line} for service {s}");
    }
    let limits = describe_limits(e);
    if !limits.is_empty() {
        line = format!("{line} ({limits})");
    }
    print_warnings(&r.warnings);
    println!("{line}");
    Ok(())
}

fn describe_limits(e: &Entry) -> String {
    let mut parts = Vec::new();
    if let Some(n) = e.max_conn_per_source {
        parts.push(format!("max {n} connections per source"));
    }
    if let Some(n) = e.max_conn_all_services {
        parts.push(format!("max {n} over all services"));
    }
    if let Some(r) = e.rate {
        parts.push(format!("rate {r}"));
    }
    if let Some(b) = e.burst {
        parts.push(format!("burst {b}"));
    }
    parts.join(", ")
}

/// How `del` finds its entry.
#[derive(Debug, Default, Clone, Copy)]
struct Widen {
    source_prefix: bool,
    missing_ok: bool,
}

fn del(socket: &Path, list: ListName, prefix: Cidr, service: Option<String>, w: Widen) -> Result<(), Failure> {
    let req = Request::ListDel {
        list,
        prefix: prefix.to_string(),
        service,
        source_prefix: w.source_prefix,
        missing_ok: w.missing_ok,
    };
    let r: RemovedReply = client(socket, &req)?;
    if let Some(p) = r.removed {
        println!("{} {p} removed", list.as_str());
    } else {
        let absent = r.absent.map_or_else(|| "?".to_owned(), |p| p.to_string());
        println!("{} {absent} was not in the list", list.as_str());
    }
    Ok(())
}

fn show(socket: &Path, list: ListName, service: Option<String>, json: bool) -> Result<(), Failure> {
    let r: ListReply = client(socket, &Request::ListShow { list, service })?;
    if json {
        return print_json(&r);
    }
    let entries = r.entries;
    if entries.is_empty() {
        println!("the {} list is empty", list.as_str());
        return Ok(());
    }
    println!("{:<44} {:<10} {:<8} {:<40} COMMENT", "PREFIX", "SERVICE", "ORIGIN", "LIMITS");
    for listed in entries {
        let e = &listed.entry;
        let limits = match (list, describe_limits(e)) {
            (ListName::Allow, l) if l.is_empty() => "exempt".to_owned(),
            (_, l) => l,
        };
        println!(
            "{:<44} {:<10} {:<8} {:<40} {}",
            printable(&e.prefix.to_string()),
            printable(e.service.as_deref().unwrap_or("-")),
            listed.origin.as_str(),
            if limits.is_empty() { "-" } else { &limits },
            printable(e.comment.as_deref().unwrap_or(""))
        );
    }
    Ok(())
}
