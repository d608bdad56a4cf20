//! `limiter check-pins`: whether the maps pinned by a running or stopped
//! daemon fit a version's programs. The package's preinst runs it (the
//! installed binary, with the new version's layout) to refuse an upgrade
//! that could not reuse the pins, before anything is unpacked.

use std::{io::Read as _, path::Path};

use super::failure::Failure;
use crate::kernel::pins;

pub(super) fn check_pins(pin_dir: &Path, layout: Option<&Path>, print_layout: bool) -> Result<(), Failure> {
    if print_layout {
        print!("{}", pins::layout_text(&pins::layouts()));
        return Ok(());
    }
    let layouts = match layout {
        None => pins::layouts(),
        Some(path) => {
            let mut text = String::new();
            let read = if path == Path::new("-") {
                std::io::stdin().read_to_string(&mut text).map(drop)
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            read.map_err(|e| Failure::bad_input(format!("cannot read the layout {}: {e}", path.display())))?;
            let layouts = pins::parse_layout(&text).map_err(Failure::bad_input)?;
            if layouts.is_empty() {
                return Err(Failure::bad_input(format!("the layout {} names no map", path.display())));
            }
            layouts
        }
    };
    if !pin_dir.exists() {
        println!("nothing pinned under {}", pin_dir.display());
        return Ok(());
    }
    pins::check_against(pin_dir, &layouts).map_err(Failure::system)?;
    println!("the maps pinned under {} fit", pin_dir.display());
    Ok(())
}
