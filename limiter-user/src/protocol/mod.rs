//! The control socket: one JSON request per line from a client, one JSON
//! response per line from the daemon. Requests are bounded in size and
//! time, so a broken or hostile client can neither crash nor block it.
//! Each request and each reply is a type here, the one both sides use.

pub mod explain;
pub mod lists;
pub mod schema;
pub mod status;

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::policy::service::Rate;
pub use crate::protocol::{
    explain::{AllServices, ExplainEntry, ExplainReply, ExplainService, KernelEntry},
    lists::{AddedReply, Entry, ListName, ListReply, ListedEntry, Origin, ReloadReply, RemovedReply},
    status::{
        AllServicesStatus, Counters, Interface, ListCounts, RecentRefusals, RefusalLines, ResponderStatus,
        ServiceStatus, StatusReply, TopReply, TopRow, Totals,
    },
};

/// Default socket path (`LIMITER_SOCKET` overrides it for clients).
pub const DEFAULT_SOCKET: &str = "/run/limiter/limiter.sock";
/// Largest request the daemon reads.
pub const MAX_REQUEST: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the answer to a read (`status`, `top`, a list).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for the answer to a change. Changes queue behind
/// each other in the daemon; a client that gave up early would report a
/// change as failed that the daemon then applied, so it waits long.
const CHANGE_TIMEOUT: Duration = Duration::from_mins(5);
/// Control clients open at once. At the cap the one that has waited longest
/// without sending its request is closed to make room (see [`serve`]): idle
/// connections cannot take the daemon's file descriptors or its attention.
pub const MAX_CLIENTS: usize = 256;

/// A request; each variant names the reply type the daemon answers it with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// [`StatusReply`].
    Status,
    /// Sources by current connections: [`TopReply`].
    Top { service: Option<String>, limit: usize },
    /// Adds a run-time entry to a list (replacing an allow entry for the
    /// same prefix): [`AddedReply`].
    ListAdd {
        list: ListName,
        prefix: String,
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        max_conn_per_source: Option<u32>,
        /// Allow entries: connections over all services together.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_conn_all_services: Option<u32>,
        /// As `N/s` or `N/m` on the wire, the text `Rate` displays and parses.
        #[serde(default)]
        rate: Option<Rate>,
        #[serde(default)]
        burst: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
        /// Widen `prefix` to the source the daemon counts (its
        /// `ipv4_prefix`/`ipv6_prefix`).
        #[serde(default)]
        source_prefix: bool,
        /// Apply even if the entry makes a deny entry cover everything or
        /// puts one prefix on both the allow and the deny list.
        #[serde(default)]
        force: bool,
    },
    /// Removes a run-time entry: [`RemovedReply`].
    ListDel {
        list: ListName,
        prefix: String,
        #[serde(default)]
        service: Option<String>,
        /// Widen `prefix` as for `ListAdd`.
        #[serde(default)]
        source_prefix: bool,
        /// An entry that is not there is no error.
        #[serde(default)]
        missing_ok: bool,
    },
    /// The entries of a list, from the config and from run time: [`ListReply`].
    ListShow {
        list: ListName,
        #[serde(default)]
        service: Option<String>,
    },
    /// Re-reads the config file and applies it: [`ReloadReply`].
    Reload,
    /// How the policy in force decides for one address now: [`ExplainReply`].
    Explain {
        address: std::net::IpAddr,
        #[serde(default)]
        service: Option<String>,
    },
}

impl Request {
    /// Whether the request changes the policy (and is persisted).
    #[must_use]
    pub const fn changes_policy(&self) -> bool {
        matches!(self, Self::ListAdd { .. } | Self::ListDel { .. } | Self::Reload)
    }
}

/// What the daemon answers a request with, as the `ok` of the response.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<StatusReply>),
    Top(TopReply),
    List(ListReply),
    Added(AddedReply),
    Removed(RemovedReply),
    Reloaded(ReloadReply),
    Explain(Box<ExplainReply>),
}

/// One response line: `{"ok": REPLY}` or `{"error": "what went wrong"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response<T> {
    Ok { ok: T },
    Err { error: String },
}

/// `v` as JSON text with the keys of every object in alphabetical order
/// (through `serde_json::Value`, whose map is sorted): the order the
/// daemon's replies and the `--json` outputs have always had, whatever
/// the order of the fields in the types. Pretty for people, else one line.
pub fn json_text<T: Serialize>(v: &T, pretty: bool) -> serde_json::Result<String> {
    let v = serde_json::to_value(v)?;
    if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the limiter daemon is not running: nothing listens on {path} ({source}); start it with `systemctl start \
         limiter` or `limiter run`, or point LIMITER_SOCKET or --socket at its socket"
    )]
    NotRunning { path: String, source: std::io::Error },
    #[error("not permitted to talk to the limiter daemon at {path}: its control socket is root's; run this as root")]
    NotPermitted { path: String },
    #[error("cannot reach the limiter daemon at {path}: {source} (set LIMITER_SOCKET or --socket)")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to the daemon at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the daemon sent a malformed response: {0}")]
    Malformed(String),
    #[error("the daemon refused the request: {0}")]
    Refused(String),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the daemon did not answer within {0:?}; the change may still be applied: check with `limiter status` or \
         the list command"
    )]
    ChangeTimeout(Duration),
}

/// Sends one request and returns the daemon's `ok` payload as `R`, the
/// reply type the request's variant names.
pub async fn request<R: DeserializeOwned>(path: &Path, req: &Request) -> Result<R, ClientError> {
    let p = path.display().to_string();
    let io = |source| ClientError::Io { path: p.clone(), source };
    let fut = async {
        let mut s = UnixStream::connect(path).await.map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { path: p.clone(), source }
            }
            std::io::ErrorKind::PermissionDenied => ClientError::NotPermitted { path: p.clone() },
            _ => ClientError::Connect { path: p.clone(), source },
        })?;
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
        line.push(b'\n');
        s.write_all(&line).await.map_err(io)?;
        let mut buf = String::new();
        BufReader::new(s).read_line(&mut buf).await.map_err(io)?;
        // In two steps, so a reply that is not an `R` says which field is wrong.
        let malformed = |e: serde_json::Error| ClientError::Malformed(format!("{e}: {}", buf.trim()));
        match serde_json::from_str::<Response<serde_json::Value>>(&buf).map_err(malformed)? {
            Response::Ok { ok } => serde_json::from_value(ok).map_err(malformed),
            Response::Err { error } => Err(ClientError::Refused(error)),
        }
    };
    if req.changes_policy() {
        tokio::time::timeout(CHANGE_TIMEOUT, fut).await.map_err(|_| ClientError::ChangeTimeout(CHANGE_TIMEOUT))?
    } else {
        tokio::time::timeout(READ_TIMEOUT, fut).await.map_err(|_| ClientError::Timeout(READ_TIMEOUT))?
    }
}

/// Reads one request from a client, bounded in size and time.
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::new();
    let mut limited = BufReader::new(stream).take(MAX_REQUEST + 1);
    let n = tokio::time::timeout(IO_TIMEOUT, limited.read_until(b'\n', &mut buf))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| format!("reading request: {e}"))?;
    if n as u64 > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
}

/// Serves clients until the task is dropped; `handle` answers each request.
///
/// Every client is accepted at once and read concurrently, at most
/// [`MAX_CLIENTS`] open. At the cap, the client that has waited longest
/// without sending its request is closed (told why) to make room for the
/// new one: a flood of idle connections only closes its own, and an admin's
/// command is answered whatever it holds open. The daemon warns when it
/// first closes one (and every minute while it goes on), with how many.
pub async fn serve<F>(listener: UnixListener, handle: F)
where
    F: Fn(Request) -> Result<Reply, String> + Clone + 'static,
{
    use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

    // Clients still sending their request, oldest first: the sender closes one.
    let waiting: Rc<RefCell<BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>> = Rc::default();
    let open = Rc::new(std::cell::Cell::new(0usize));
    // Told by every client's task when it has closed its connection.
    let gone = Rc::new(tokio::sync::Notify::new());
    let (mut next, mut closed, mut warned) = (0u64, 0u64, None::<std::time::Instant>);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.get() >= MAX_CLIENTS {
            let oldest = waiting.borrow_mut().pop_first();
            if let Some((_, close)) = oldest {
                let _ = close.send(());
                closed += 1;
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_mins(1)) {
                    log::warn!(
                        "control socket: {MAX_CLIENTS} clients open at once; closing the one waiting longest without \
                         a request to make room ({closed} closed so far: clients that connect and send nothing?)"
                    );
                    warned = Some(std::time::Instant::now());
                }
                // Its task writes only what goes at once and closes: wait for
                // that, so that no more than the cap are ever open.
                while open.get() >= MAX_CLIENTS {
                    gone.notified().await;
                }
            } else {
                // Every open client has sent its request and is being answered.
                let _ = stream.try_write(busy_line().as_bytes());
                continue;
            }
        }
        next += 1;
        let id = next;
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        waiting.borrow_mut().insert(id, close_tx);
        open.set(open.get() + 1);
        let (handle, waiting, open, gone) = (handle.clone(), Rc::clone(&waiting), Rc::clone(&open), Rc::clone(&gone));
        tokio::task::spawn_local(async move {
            let read = tokio::select! {
                r = read_request(&mut stream) => Some(r),
                _ = close_rx => None,
            };
            waiting.borrow_mut().remove(&id);
            let evicted = read.is_none();
            let resp = match read {
                Some(Ok(req)) => match handle(req) {
                    Ok(ok) => Response::Ok { ok },
                    Err(error) => Response::Err { error },
                },
                Some(Err(error)) => Response::Err { error },
                None => Response::Err {
                    error: format!("closed: {MAX_CLIENTS} control clients at once, and this one sent no request"),
                },
            };
            if let Ok(mut line) = json_text(&resp, false) {
                line.push('\n');
                if evicted {
                    // Closed to make room: what the socket takes now, no wait.
                    let _ = stream.try_write(line.as_bytes());
                } else {
                    let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(line.as_bytes())).await;
                }
            }
            drop(stream);
            open.set(open.get() - 1);
            gone.notify_one();
        });
    }
}

/// The answer to a client over the cap when every open one is being answered.
fn busy_line() -> String {
    let resp: Response<Reply> =
        Response::Err { error: format!("busy: {MAX_CLIENTS} control clients are being answered; try again") };
    json_text(&resp, false).map(|l| l + "\n").unwrap_or_default()
}

#[cfg(test)]
mod tests;
