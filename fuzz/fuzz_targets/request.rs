//! One control request, as a client writes it to the socket: it reads or is
//! refused, a request that reads writes back as the same request, and the
//! checks a list change passes before it reaches the daemon's state take
//! whatever text it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_user::{
    policy::lists::{Cidr, check_comment, check_service_name, printable, shown},
    protocol::Request,
};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    let text = serde_json::to_vec(&req).expect("a request serializes");
    let again: Request = serde_json::from_slice(&text).expect("a written request reads back");
    assert_eq!(serde_json::to_vec(&again).expect("serializes"), text, "a request changes on a write and read");
    let (prefix, service, comment) = match &req {
        Request::ListAdd { prefix, service, comment, .. } => (prefix, service, comment.as_deref()),
        Request::ListDel { prefix, service, .. } => (prefix, service, None),
        Request::Top { service: Some(s), .. } | Request::ListShow { service: Some(s), .. } => {
            let _ = check_service_name(s);
            return;
        }
        _ => return,
    };
    let _ = prefix.parse::<Cidr>();
    if let Some(s) = service {
        let _ = check_service_name(s);
    }
    for text in [Some(prefix.as_str()), service.as_deref(), comment].into_iter().flatten() {
        // Whatever a client sends, what a terminal or a log line gets of it
        // is one printable line, and an error names it in bounded length.
        assert!(!printable(text).chars().any(char::is_control), "{text:?} prints control characters");
        let s = shown(text);
        assert!(!s.chars().any(char::is_control) && s.chars().count() <= 300, "{text:?} is shown as {s:?}");
    }
    if let Some(c) = comment {
        let _ = check_comment(c);
    }
});
