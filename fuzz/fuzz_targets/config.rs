//! A config file's text, as `limiter check-config` and `limiter run` read it:
//! the check never panics, and a text the check passes is one `run` builds
//! a policy from (no "check-config says OK, run refuses").
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_user::policy::{
    build::check,
    file::ConfigFile,
    model::{Overrides, Policy},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let o = Overrides::default();
    let checked = check(text, "fuzz.toml", &o, &|_| true);
    let parsed = ConfigFile::parse(text, "fuzz.toml");
    match (checked, parsed) {
        (Ok(_), Ok(file)) => {
            if let Err(e) = Policy::build(file, &o) {
                panic!("check-config passes a config that run refuses: {e}");
            }
        }
        (Ok(_), Err(e)) => panic!("check-config passes a config that does not parse: {e}"),
        _ => {}
    }
});
