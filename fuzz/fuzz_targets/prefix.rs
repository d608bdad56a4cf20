//! Prefix text as the CLI, the config and the state file take it (CIDR,
//! bare addresses, wildcards). What parses prints back as text that parses
//! to the same prefix, with no host bits set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_common::prefix::Prefix;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = Prefix::parse(text) else {
        return;
    };
    let shown = p.to_string();
    let again =
        Prefix::parse(&shown).unwrap_or_else(|e| panic!("{text:?} parsed as {shown}, which does not parse: {e}"));
    assert_eq!(again, p, "{text:?} -> {shown} -> another prefix");
    assert_eq!(again.to_string(), shown, "{text:?}: the text is not stable");
    // Host bits cleared: the prefix is its own network.
    let (ip, len) = shown.split_once('/').map_or((shown.as_str(), None), |(ip, len)| (ip, Some(len)));
    let ip: std::net::IpAddr = ip.parse().expect("an address");
    let len = len.map_or(if ip.is_ipv4() { 32 } else { 128 }, |l| l.parse().expect("a length"));
    assert_eq!(Prefix::new(ip, len), p, "{text:?}: host bits left set");
});
