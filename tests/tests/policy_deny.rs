//! Deny entries end to end (see `limiter_tests::policy`): an IPv4 host and
//! an IPv6 /48 are refused at once while their neighbours are not, and a
//! deny entry beats an allow entry for the same host.
#![expect(unused_crate_dependencies, reason = "integration tests see all of the crate's dependencies")]

use std::net::IpAddr;

use limiter_tests::{
    cli::{limiter, ok},
    netns::{Daemon, Pair},
    policy::{PORT, assert_bad_input, assert_open, attempt, counter, entries, listen_echo},
    privileged, require,
};
use serde_json::json;

/// An IPv6 /48 outside every pair's own `2001:db8:N::/48` (N <= 200), for
/// sources the deny test puts on the list as a whole.
const FOREIGN_V6: &str = "2001:db8:f066";

/// Lets client addresses in [`FOREIGN_V6`]`::/48` reach the server.
fn route_foreign_v6(pair: &Pair) {
    pair.server.exec(&["ip", "-6", "route", "add", &format!("{FOREIGN_V6}::/48"), "dev", &pair.server_if]);
}

/// Adds client address `FOREIGN_V6:subnet::host` (see [`route_foreign_v6`]).
fn add_foreign_v6(pair: &Pair, subnet: u16, host: u16) -> IpAddr {
    let a = format!("{FOREIGN_V6}:{subnet:x}::{host:x}");
    pair.client.exec(&["ip", "addr", "add", &format!("{a}/48"), "dev", &pair.client_if, "nodad"]);
    a.parse().expect("valid v6")
}

/// Deny entries refuse at once, for an IPv4 host and an IPv6 /48, and beat
/// an allow entry for the same host.
#[test]
fn deny_refuses_v4_host_and_v6_48_and_beats_allow() {
    require!(privileged());
    let pair = Pair::new();
    let _echo = listen_echo(&pair, PORT);
    let denied4 = pair.add_client_v4(5);
    let fine4 = pair.add_client_v4(6);
    let both = pair.add_client_v4(7);
    let fine6 = pair.add_client_v6(1, 0x10);
    route_foreign_v6(&pair);
    let (far1, far2) = (add_foreign_v6(&pair, 1, 5), add_foreign_v6(&pair, 2, 5));
    let d = Daemon::start(
        &pair.server,
        &["--iface", &pair.server_if, "--port", "2525", "--max-conn-per-source", "2", "--action", "reset"],
    );
    // The foreign /48 is reachable: one of far1's two slots, held.
    let _far1_held = attempt(&pair, far1, 1, 1, "far1 before the deny entry");

    ok(&d, &["deny", "add", &denied4.to_string(), "--comment", "spam run"]);
    ok(&d, &["deny", "add", &format!("{FOREIGN_V6}::/48")]);
    assert_eq!(
        entries(&d, "deny"),
        [
            json!({"prefix": format!("198.18.{}.5/32", pair.net), "comment": "spam run", "origin": "runtime"}),
            json!({"prefix": format!("{FOREIGN_V6}::/48"), "origin": "runtime"}),
        ],
        "deny list"
    );
    let _ = attempt(&pair, denied4, 3, 0, "denied IPv4 host");
    let _ = attempt(&pair, far1, 3, 0, "denied /48, first /64 (holding 1 of 2)");
    let _ = attempt(&pair, far2, 3, 0, "denied /48, second /64");
    assert_eq!(counter(&d, "refused_deny"), 9);
    // Their neighbours, identical but for the address, are admitted.
    let _h1 = attempt(&pair, fine4, 3, 2, "IPv4 host next to the denied one");
    let _h2 = attempt(&pair, fine6, 3, 2, "IPv6 host outside the denied /48");

    // Exempt first: more than the limit.
    ok(&d, &["allow", "add", &both.to_string()]);
    let mut held_both = attempt(&pair, both, 5, 5, "exempt host");
    // Deny wins over allow for the same host; what is established stays.
    // One prefix on both lists is almost surely a mistake: refused without --force.
    let out = limiter(&d, &["deny", "add", &both.to_string()]);
    assert_bad_input(&out, "deny add of an allowed host", "--force");
    ok(&d, &["deny", "add", &both.to_string(), "--force"]);
    let _ = attempt(&pair, both, 3, 0, "host on both lists");
    assert_eq!(counter(&d, "refused_deny"), 12);
    assert_open(&mut held_both, "connections of the newly denied host");
    ok(&d, &["deny", "del", &format!("{both}/32")]);
    let _more = attempt(&pair, both, 2, 2, "exempt again after deny del");
    ok(&d, &["deny", "del", &denied4.to_string()]);
    let _back = attempt(&pair, denied4, 3, 2, "no longer denied");
    assert_eq!(counter(&d, "refused_deny"), 12, "no deny refusals after the entries went");
    assert_eq!(
        entries(&d, "deny"),
        [json!({"prefix": format!("{FOREIGN_V6}::/48"), "origin": "runtime"})],
        "deny list after del"
    );
}
