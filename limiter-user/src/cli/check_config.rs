//! `limiter check-config`: a config file checked as `run` would read it,
//! without a daemon or the kernel.

use std::path::Path;

use super::failure::Failure;
use crate::policy::{build, file, model::Overrides};

/// `limiter check-config`: problems and warnings on stderr, one per line;
/// on success one line on stdout.
pub(super) fn check_config(path: &Path) -> Result<(), Failure> {
    let shown = path.display().to_string();
    let text = file::read_text(path)?;
    match build::check(&text, &shown, &Overrides::default(), &|n| crate::kernel::host::ifindex(n).is_ok()) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            println!("{shown}: ok ({})", c.policy.summary());
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let n = problems.len();
            Err(Failure::bad_input(format!("{shown}: {n} problem{}", if n == 1 { "" } else { "s" })))
        }
    }
}
