//! The state file's lists (`lists.json`), as the daemon reads it at start:
//! anything that reads and has no problem merges into trie entries that
//! answer every list (each deny prefix is denied), and writes back as JSON
//! that reads as the same lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_common::lists::entry;
use limiter_user::policy::lists::{Lists, longest_match};

fuzz_target!(|data: &[u8]| {
    let Ok(lists) = serde_json::from_slice::<Lists>(data) else {
        return;
    };
    let text = serde_json::to_vec(&lists).expect("lists serialize");
    let again: Lists = serde_json::from_slice(&text).expect("written lists read back");
    assert_eq!(again, lists, "lists change on a write and read");
    if !lists.problems().is_empty() {
        return;
    }
    let _ = lists.footguns();
    let merged = lists.merge(&[]);
    for d in &lists.deny {
        let e = longest_match(&merged, &d.prefix.0).expect("a deny prefix is in the merged lists");
        assert!(e.flags & entry::DENY != 0, "deny {} is not denied after the merge", d.prefix);
    }
    for a in &lists.allow {
        let e = longest_match(&merged, &a.prefix.0).expect("an allow prefix is in the merged lists");
        assert!(e.flags & (entry::ALLOW | entry::DENY) != 0, "allow {} lost in the merge", a.prefix);
    }
});
