//! Connection life cycle: counts established connections per source in
//! `CONNS`. A passive handshake completing on a service port of the
//! daemon's network namespace adds one (and gives back the handshake's
//! pending reservation); that socket reaching CLOSE, by either side, RST or
//! timeout, takes one away. Only completed handshakes create entries. A
//! completed handshake is also forgotten in `HANDSHAKES`, so its identity
//! cannot be replayed as a "retransmission" once the connection is gone.
//! Sockets of the `respond` action's responder (`steer::RESPONDER_MARK`) are
//! skipped before anything else. A service with a `dead_peer_timeout` gets
//! keepalive and a user timeout on its accepted connections ([`keepalive`]),
//! so that a vanished client's connection reaches CLOSE and is released here.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use limiter_common::{
    Globals, SourceKey,
    handshake::Handshake,
    keepalive::{Keepalive, opt},
    lists::entry,
    maps::{ALL_SERVICES, SockRecord, family, flags},
    pending::{self, hint, holders},
    pool,
    prefix::{mask_v4, mask_v6},
    steer::RESPONDER_MARK,
};

use crate::maps::{
    CONNS, GLOBALS, PORTS, Place, SEED_SKIP, SOCKS, UNCOUNTED, compare_swap, fetch_add, fetch_and, handshake_entry,
    list_entry, load, now_ns, policy, release_pending, release_session, reserved, sessions, slot_conns,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
#[expect(clippy::needless_pass_by_value, reason = "the #[sock_ops] macro hands the context over by value")]
pub(crate) fn limiter_sock_ops(ctx: SockOpsContext) -> u32 {
    let _ = try_sock_ops(&ctx);
    1
}

/// Volatile read of a context field: adjacent u32 fields must not be merged
/// into one 8-byte load, which the verifier rejects (docs/kernel-notes.md,
/// "Verifier and code generation").
macro_rules! field {
    ($ctx:expr, $($f:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.ops).$($f)+) }
    };
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<(), ()> {
    if responder(ctx) {
        return Ok(());
    }
    let op = field!(ctx, op);
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let (key, addr, g) = service_key(ctx)?;
        // Before the reservation is given back: a SYN that still finds the
        // entry then finds the reservation too.
        forget(ctx, &addr, key.family);
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        opened(&key, &addr, g, cookie);
        if g.flags & flags::SEEDING != 0 {
            // The daemon is reading the socket table right now and may see
            // this socket there too: tell it this one is already counted.
            let _ = SEED_SKIP.insert(cookie, 1u8, 0);
        }
        // Ask for state callbacks so the close is seen. The flag outlives
        // this program and is shared by all sock_ops programs on the path.
        let flags = field!(ctx, bpf_sock_ops_cb_flags);
        #[expect(clippy::cast_possible_wrap, reason = "small flag bits")]
        let _ = ctx.set_cb_flags((flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        if let Some(p) = policy(g, u32::from(key.service))
            && let Some(k) = Keepalive::of(p.dead_peer_timeout_s())
        {
            keepalive(ctx, &k);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB {
        let new_state = field!(ctx, __bindgen_anon_1.args[1]);
        if new_state == BPF_TCP_CLOSE {
            let g = GLOBALS.get(0).ok_or(())?;
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            // What was counted at the open is taken away, whatever the
            // policy says now.
            if let Some(rec) = SOCKS.get_ptr(cookie) {
                let rec = unsafe { *rec };
                let _ = SOCKS.remove(cookie);
                if rec.counted != 0 {
                    closed(&rec.key, g);
                }
                if rec.counted_all != 0 {
                    let mut all = rec.key;
                    all.service = ALL_SERVICES;
                    closed(&all, g);
                }
                if rec.pooled != 0 {
                    session_closed(u32::from(rec.key.service));
                }
                return Ok(());
            }
            // Not recorded (opened by an older version, or the record table
            // was full): re-check namespace and port, since the flag may have
            // been set by an earlier program instance or another program.
            let (key, _, g) = service_key(ctx)?;
            closed(&key, g);
        }
    }
    Ok(())
}

/// Dead peers: turns on keepalive with the service's `k` on an accepted
/// connection (a full socket here, which `bpf_setsockopt` needs), unless the
/// server turned keepalive on itself (on the listener, which the accepted
/// socket inherits): then the server's settings stand. A user timeout the
/// server set stands too. Keepalive goes on last, and only if every
/// parameter took, so that a failure leaves the socket as the server made
/// it rather than with the kernel's two-hour default. A connection given up
/// on goes to CLOSE through the kernel, and its state callback releases it.
#[inline(always)]
fn keepalive(ctx: &SockOpsContext, k: &Keepalive) {
    if getsockopt(ctx, opt::SOL_SOCKET, opt::SO_KEEPALIVE) != Some(0) {
        return;
    }
    #[expect(clippy::cast_possible_wrap, reason = "values are bounded by keepalive::MAX_SECS * 1000")]
    let ok = setsockopt(ctx, opt::SOL_TCP, opt::TCP_KEEPIDLE, k.idle_s as i32)
        && setsockopt(ctx, opt::SOL_TCP, opt::TCP_KEEPINTVL, k.interval_s as i32)
        && setsockopt(ctx, opt::SOL_TCP, opt::TCP_KEEPCNT, k.probes as i32)
        && (getsockopt(ctx, opt::SOL_TCP, opt::TCP_USER_TIMEOUT) != Some(0)
            || setsockopt(ctx, opt::SOL_TCP, opt::TCP_USER_TIMEOUT, k.user_timeout_ms as i32));
    if ok {
        let _ = setsockopt(ctx, opt::SOL_SOCKET, opt::SO_KEEPALIVE, 1);
    }
}

/// An `int` socket option of the connection; `None` if it cannot be read.
#[inline(always)]
fn getsockopt(ctx: &SockOpsContext, level: i32, name: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let r = unsafe { bpf_getsockopt(ctx.ops.cast(), level, name, (&raw mut v).cast(), 4) };
    if r == 0 { Some(v) } else { None }
}

/// Sets an `int` socket option of the connection; false if the kernel refused.
#[inline(always)]
fn setsockopt(ctx: &SockOpsContext, level: i32, name: i32, value: i32) -> bool {
    let mut v = value;
    unsafe { bpf_setsockopt(ctx.ops.cast(), level, name, (&raw mut v).cast(), 4) == 0 }
}

/// Whether the socket is the responder's (its listener's `SO_MARK`, which
/// accepted connections inherit): those are never counted and release
/// nothing. `sk` is null for callbacks on request sockets, which count nothing.
#[inline(always)]
fn responder(ctx: &SockOpsContext) -> bool {
    let sk = field!(ctx, __bindgen_anon_2.sk);
    !sk.is_null() && unsafe { core::ptr::read_volatile(&raw const (*sk).mark) } == RESPONDER_MARK
}

/// The counted source of this socket and its unmasked address, if it is a
/// service socket of our network namespace. IPv4 clients of a dual-stack
/// listener (`::ffff:a.b.c.d`) count as IPv4.
///
/// Always inlined: as a function its `Result` of a tuple gets a BTF union
/// layout the kernel's BTF loader rejects (a loud warning at every start).
#[inline(always)]
fn service_key(ctx: &SockOpsContext) -> Result<(SourceKey, [u8; 16], &'static Globals), ()> {
    let g = GLOBALS.get(0).ok_or(())?;
    let cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    if cookie != g.netns_cookie {
        return Err(());
    }
    let port = field!(ctx, local_port);
    let service = PORTS.get(port).copied().unwrap_or(0);
    if service == 0 {
        return Err(());
    }
    #[expect(clippy::cast_possible_truncation, reason = "service ids are < MAX_SERVICES")]
    let mut key = SourceKey { addr: [0; 16], service: service as u8, family: family::V4, pad: [0; 2] };
    let mut addr = [0u8; 16];
    match field!(ctx, family) {
        AF_INET => {
            addr[..4].copy_from_slice(&field!(ctx, remote_ip4).to_ne_bytes());
            key.addr[..4].copy_from_slice(&mask_v4(field!(ctx, remote_ip4).to_ne_bytes(), g.ipv4_prefix));
        }
        AF_INET6 => {
            let ops: *const bpf_sock_ops = ctx.ops;
            let w = unsafe {
                [
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
                ]
            };
            if w[0] == 0 && w[1] == 0 && w[2].to_ne_bytes() == [0, 0, 0xff, 0xff] {
                addr[..4].copy_from_slice(&w[3].to_ne_bytes());
                key.addr[..4].copy_from_slice(&mask_v4(w[3].to_ne_bytes(), g.ipv4_prefix));
            } else {
                addr[..4].copy_from_slice(&w[0].to_ne_bytes());
                addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
                addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
                addr[12..].copy_from_slice(&w[3].to_ne_bytes());
                key.addr = mask_v6(addr, g.ipv6_prefix);
                key.family = family::V6;
            }
        }
        _ => return Err(()),
    }
    Ok((key, addr, g))
}

/// Forgets the completed handshake's identity in `HANDSHAKES` (if it is
/// still the one there). The client's ISN is `rcv_nxt - 1` when the
/// handshake completes; `remote_port` is in network order in the high
/// 16 bits on little-endian, so `ntohl` gives the port.
#[inline(always)]
fn forget(ctx: &SockOpsContext, addr: &[u8; 16], fam: u8) {
    #[expect(clippy::cast_possible_truncation, reason = "16-bit ports in 32-bit fields")]
    let (sport, dport) = (u32::from_be(field!(ctx, remote_port)) as u16, field!(ctx, local_port) as u16);
    let isn = field!(ctx, rcv_nxt).wrapping_sub(1);
    let id = Handshake::new(addr, fam, sport, dport, isn, 0);
    if let Some(entry) = handshake_entry(&id)
        && unsafe { (*entry).same(&id) }
    {
        unsafe { core::ptr::write_volatile(&raw mut (*entry).family, 0) };
    }
}

/// A handshake completed: one more established connection (`CONNS`, then
/// the slot's sum), then one less reservation (in that order, so a
/// concurrent SYN never sees too few); the same for the service's sessions
/// unless the source is exempt. What was counted is recorded under the
/// socket's cookie for the close.
fn opened(key: &SourceKey, addr: &[u8; 16], g: &Globals, cookie: u64) {
    let now = pending::ticks(now_ns());
    let counted = count_source(key, g, now);
    // The source over all services (the source-wide budget), counted
    // whether or not a budget is set, so that one set by a reload starts
    // from the right count.
    let mut all = *key;
    all.service = ALL_SERVICES;
    let counted_all = count_source(&all, g, now);
    if !(counted && counted_all)
        && let Some(n) = UNCOUNTED.get_ptr_mut(0)
    {
        // `CONNS` is full: the daemon warns when this grows. Per CPU, and a
        // program runs to its end on one: a plain add.
        unsafe { *n += 1 };
    }
    let exempt =
        list_entry(g, key.family, addr).is_some_and(|e| e.flags & entry::DENY == 0 && e.flags & entry::EXEMPT != 0);
    let mut pooled = false;
    if !exempt && let Some((word, established)) = sessions(u32::from(key.service)) {
        unsafe { fetch_add(established, 1) };
        release_session(word, pool::bucket(now));
        pooled = true;
    }
    let rec = SockRecord {
        key: *key,
        counted: u8::from(counted),
        pooled: u8::from(pooled),
        counted_all: u8::from(counted_all),
        pad: 0,
    };
    if SOCKS.insert(cookie, rec, 0).is_err() {
        // Without a record the close cannot know it was pooled or counted
        // over all services: do not count it there (its close takes away
        // only the service's count, as for a connection of an older version).
        if pooled {
            session_closed(u32::from(key.service));
        }
        if counted_all {
            closed(&all, g);
        }
    }
}

/// One more established connection of `key` (`CONNS`, then the slot's sum),
/// then one less reservation (in that order, so a concurrent SYN never sees
/// too few). False if it could not be counted.
#[inline(always)]
fn count_source(key: &SourceKey, g: &Globals, now: u32) -> bool {
    let counted = count_open(key);
    let place = Place::of(key);
    if let Some(slot) = place.pending(g) {
        if counted {
            add_holder(slot_conns(slot), place.fingerprint);
        }
        release_pending(reserved(slot), place.tag, now);
    }
    counted
}

/// One more connection on the slot's `conns` word, counted for the source
/// of `fingerprint` (`limiter_common::pending::holders`). At a count of zero
/// the word starts afresh with this source alone; otherwise the count goes
/// up, then the source's bits are marked, with two atomic steps that never
/// fail (a SYN of this source reading between them still finds the
/// reservation this connection holds until `count_source` releases it).
#[inline(always)]
fn add_holder(word: *mut u64, fingerprint: u32) {
    let old = unsafe { load(word) };
    if holders::count(old) == 0 && unsafe { compare_swap(word, old, holders::add(old, fingerprint, 1)) } {
        return;
    }
    unsafe {
        fetch_add(word, 1);
        fetch_and(word, !holders::bits(fingerprint));
    }
}

/// A pooled connection closed: one less session in use, never below zero.
fn session_closed(service: u32) {
    let Some((_, established)) = sessions(service) else {
        return;
    };
    for _ in 0..8 {
        let old = unsafe { load(established) };
        if old == 0 || unsafe { compare_swap(established, old, old - 1) } {
            return;
        }
    }
}

/// `CONNS[key] += 1`. The daemon deletes entries that have stayed at zero
/// for a while; if it deleted this one between our lookup and our add, the
/// add went to a dead element, which a second lookup shows: then count
/// again in the live entry.
/// False if the connection could not be counted.
#[inline(always)]
fn count_open(key: &SourceKey) -> bool {
    for _ in 0..3 {
        if let Some(c) = CONNS.get_ptr_mut(key) {
            unsafe { fetch_add(c, 1) };
            if CONNS.get_ptr_mut(key) == Some(c) {
                return true;
            }
        } else if CONNS.insert(key, 1, u64::from(BPF_NOEXIST)).is_ok() {
            return true;
        }
        // Another CPU created it first, or ours was deleted: look again.
        // (A full map fails every try: the connection goes uncounted,
        // failing open; `opened` tells the daemon.)
    }
    false
}

/// A counted connection closed: one less in `CONNS` and in the slot's sum,
/// never below zero, then the source's "at its limit" hint is cleared (after the decrement: see
/// `limiter_common::pending::hint`). The entry stays at zero (deleting it
/// here would race with a concurrent increment); the daemon reclaims entries
/// that stay at zero.
fn closed(key: &SourceKey, g: &Globals) {
    let Some(c) = CONNS.get_ptr_mut(key) else {
        return;
    };
    let mut counted = false;
    for _ in 0..8 {
        let old = unsafe { load(c) };
        if old == 0 {
            break;
        }
        if unsafe { compare_swap(c, old, old - 1) } {
            counted = true;
            break;
        }
    }
    let place = Place::of(key);
    let Some(slot) = place.pending(g) else {
        return;
    };
    // The slot's sum follows `CONNS` down, never below zero, and only for a
    // connection `CONNS` had counted: so it never drops under any source's count.
    if counted {
        let sum = slot_conns(slot);
        for _ in 0..8 {
            let old = unsafe { load(sum) };
            // At zero no holder is left: the word starts afresh. (A swap
            // that keeps failing leaves the count high: XDP then looks
            // `CONNS` up for nothing, never skips it for a holder.)
            let Some(new) = holders::closed(old) else { break };
            if unsafe { compare_swap(sum, old, new) } {
                break;
            }
        }
    }
    let word = crate::maps::hint(slot);
    // A failed swap means another CPU's change to the word landed first;
    // 16 tries outlast any contention one slot sees.
    for _ in 0..16 {
        let old = unsafe { load(word) };
        if unsafe { compare_swap(word, old, hint::closed(old, place.fingerprint)) } {
            return;
        }
    }
}
