//! Run-time list entries (`limiter allow|deny|reserve add`), kept in
//! `STATE_DIR/lists.json` so they survive a restart. Every change is written
//! to a temporary file, synced, renamed over the old one and the directory
//! synced, before the command reports success: a crash leaves the old file
//! or the new one, never a mix.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::lists::Lists;

const FILE: &str = "lists.json";

/// The run-time layer of the lists and where it is kept.
#[derive(Debug, Clone)]
pub struct RuntimeLists {
    pub lists: Lists,
    path: PathBuf,
}

impl RuntimeLists {
    /// Reads the state file; none yet means no run-time entries.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed: starting without
    /// its deny entries would silently let those sources in.
    pub fn load(state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(FILE);
        let lists = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                format!(
                    "state file {} is corrupt ({e}); move it away to start without run-time entries",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lists::default(),
            Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
        };
        Ok(Self { lists, path })
    }

    /// Writes `lists` durably (write, fsync, rename, fsync the directory)
    /// and makes them this layer's entries.
    ///
    /// # Errors
    /// When any step fails; the old file is then left as it was.
    pub fn store(&mut self, lists: Lists) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&lists).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write state file {}: {e}", self.path.display())
        })?;
        self.lists = lists;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::{Cidr, DenyEntry};

    #[test]
    fn store_then_load_round_trips_and_corruption_is_refused() {
        let dir = std::env::temp_dir().join(format!("limiter-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut s = RuntimeLists::load(&dir).expect("empty");
        assert!(s.lists.is_empty());
        let deny = DenyEntry { prefix: "2001:db8:66::/48".parse::<Cidr>().expect("cidr"), comment: Some("x".into()) };
        s.store(Lists { deny: vec![deny], ..Lists::default() }).expect("store");
        let back = RuntimeLists::load(&dir).expect("load");
        assert_eq!(back.lists, s.lists);
        assert!(!dir.join("lists.json.tmp").exists());
        std::fs::write(dir.join(FILE), "{ not json").expect("write");
        let err = RuntimeLists::load(&dir).expect_err("corrupt");
        assert!(err.contains("corrupt") && !err.contains('\n'), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
