//! Run-time list entries (`limiter allow|deny|reserve add`), kept in
//! `STATE_DIR/lists.json` so they survive a restart. Every change is written
//! to a temporary file, synced, renamed over the old one and the directory
//! synced, before the command reports success: a crash leaves the old file
//! or the new one, never a mix.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::policy::lists::Lists;

const FILE: &str = "lists.json";
/// Mode of `lists.json` and its temporary file: the daemon's user writes,
/// its group (admins, monitoring) reads, others nothing.
pub const MODE: u32 = 0o640;
/// Largest `lists.json` read (65,536 entries with 200-byte comments fit).
const MAX_BYTES: u64 = 64 << 20;

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file is there but its content is not what the daemon writes:
    /// bad input, which a restart does not fix.
    #[error(
        "state file {path} is unusable: {problem}; `limiter run --discard-runtime-lists` moves it aside \
         (kept as {path}.bad-TIMESTAMP) and starts without run-time entries"
    )]
    Corrupt { path: String, problem: String },
    #[error("cannot read state file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot move state file {path} aside to {to}: {source}")]
    Discard { path: String, to: String, source: std::io::Error },
}

/// The run-time layer of the lists and where it is kept.
#[derive(Debug, Clone)]
pub struct RuntimeLists {
    pub lists: Lists,
    path: PathBuf,
}

impl RuntimeLists {
    /// Reads the state file; none yet means no run-time entries. Its
    /// entries are checked with the rules of the config and the commands.
    ///
    /// # Errors
    /// When the file exists but cannot be read, parsed or validated:
    /// starting without its deny entries would silently let those sources in.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(FILE);
        let p = path.display().to_string();
        let corrupt = |problem: String| StateError::Corrupt { path: p.clone(), problem };
        let lists = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read as _;
                let mut text = Vec::new();
                f.take(MAX_BYTES + 1)
                    .read_to_end(&mut text)
                    .map_err(|source| StateError::Read { path: p.clone(), source })?;
                if text.len() as u64 > MAX_BYTES {
                    return Err(corrupt(format!("larger than {} MiB", MAX_BYTES >> 20)));
                }
                let lists: Lists = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
                let problems = lists.problems();
                if let Some(first) = problems.first() {
                    let more = match problems.len() {
                        1 => String::new(),
                        n => format!(" (and {} more)", n - 1),
                    };
                    return Err(corrupt(format!("{first}{more}")));
                }
                lists
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lists::default(),
            Err(source) => return Err(StateError::Read { path: p, source }),
        };
        Ok(Self { lists, path })
    }

    /// `limiter run --discard-runtime-lists`: if the state file cannot be
    /// loaded, renames it to `lists.json.bad-SECONDS` (never deleted) so the
    /// daemon starts without run-time entries. Returns the backup's path.
    ///
    /// # Errors
    /// When the file cannot be renamed.
    pub fn discard_if_unusable(state_dir: &Path) -> Result<Option<PathBuf>, StateError> {
        if Self::load(state_dir).is_ok() {
            return Ok(None);
        }
        let path = state_dir.join(FILE);
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut to = state_dir.join(format!("{FILE}.bad-{secs}"));
        let mut n = 1;
        while to.exists() {
            to = state_dir.join(format!("{FILE}.bad-{secs}.{n}"));
            n += 1;
        }
        std::fs::rename(&path, &to).map_err(|source| StateError::Discard {
            path: path.display().to_string(),
            to: to.display().to_string(),
            source,
        })?;
        Ok(Some(to))
    }

    /// Writes `lists` durably (write, fsync, rename, fsync the directory)
    /// and makes them this layer's entries.
    ///
    /// # Errors
    /// When any step fails; the old file is then left as it was.
    pub fn store(&mut self, lists: Lists) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(&lists)
            .map_err(|e| StateError::Write { path: self.path.display().to_string(), source: e.into() })?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            // A temporary file left by a crash may have other permissions:
            // start afresh, created with the final mode (umask may narrow it).
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(MODE).open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(MODE))?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            crate::failpoint::hit("lists-temp-written");
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            StateError::Write { path: self.path.display().to_string(), source }
        })?;
        self.lists = lists;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::policy::lists::{Cidr, DenyEntry};

    /// A fresh directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("limiter-state-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn store_then_load_round_trips_and_corruption_is_refused() {
        let dir = Dir::new("roundtrip");
        let mut s = RuntimeLists::load(&dir.0).expect("empty");
        assert!(s.lists.is_empty());
        let deny = DenyEntry { prefix: "2001:db8:66::/48".parse::<Cidr>().expect("cidr"), comment: Some("x".into()) };
        s.store(Lists { deny: vec![deny], ..Lists::default() }).expect("store");
        let back = RuntimeLists::load(&dir.0).expect("load");
        assert_eq!(back.lists, s.lists);
        assert!(!dir.0.join("lists.json.tmp").exists());
        std::fs::write(dir.0.join(FILE), "{ not json").expect("write");
        let err = RuntimeLists::load(&dir.0).expect_err("corrupt").to_string();
        assert!(err.contains("unusable") && !err.contains('\n'), "{err}");
    }

    /// `lists.json` is read with the rules of the config and the commands:
    /// each of these is refused with one line that names the file, the
    /// entry and the way out.
    #[test]
    fn lists_json_is_validated_like_any_input() {
        let dir = Dir::new("validate");
        let long = "x".repeat(201);
        let cases: &[(&str, &str)] = &[
            (r#"{"allow":[{"prefix":"10.0.0.0/8","max_conn_per_source":0}]}"#, "allow[0].max_conn_per_source"),
            (r#"{"allow":[{"prefix":"10.0.0.0/8","burst":5}]}"#, "without rate"),
            (r#"{"allow":[{"prefix":"10.0.0.0/8","rate":"5/s","burst":0}]}"#, "burst = 0"),
            (r#"{"allow":[{"prefix":"10.0.0.0/8","rate":"5/s","burst":2000000}]}"#, "burst = 2000000"),
            (r#"{"allow":[{"prefix":"10.0.0.0/8","rate":"5/h"}]}"#, "bad rate '5/h'"),
            (r#"{"allow":[{"prefix":"10.0.0.0/8","max_conn":3}]}"#, "unknown field"),
            (r#"{"allow":[],"extra":1}"#, "unknown field"),
            (r#"{"deny":[{"prefix":"10.0.0.300"}]}"#, "10.0.0.300"),
            (&format!(r#"{{"deny":[{{"prefix":"10.0.0.1","comment":"{long}"}}]}}"#), "201 bytes"),
            (r#"{"deny":[{"prefix":"10.0.0.1","comment":"a\u001b[2Jb"}]}"#, "control character"),
            (r#"{"reserve":[{"prefix":"10.0.0.1","service":"smtp","comment":"a\nb"}]}"#, "control character"),
            (r#"{"allow":[{"prefix":"10.0.0.1"},{"prefix":"10.0.0.1/32"}]}"#, "allow 10.0.0.1/32 listed twice"),
            (r#"{"deny":[{"prefix":"10.*"},{"prefix":"10.0.0.0/8"}]}"#, "deny 10.0.0.0/8 listed twice"),
            (
                r#"{"reserve":[{"prefix":"10.0.0.1","service":"smtp"},{"prefix":"10.0.0.1","service":"smtp"}]}"#,
                "listed twice",
            ),
            (r#"{"reserve":[{"prefix":"10.0.0.1","service":"no such name!"}]}"#, "service name"),
        ];
        for (text, want) in cases {
            std::fs::write(dir.0.join(FILE), text).expect("write");
            let err = RuntimeLists::load(&dir.0).expect_err(text);
            assert!(matches!(err, StateError::Corrupt { .. }), "{text}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(want), "{text}: {msg} does not name {want:?}");
            assert!(msg.contains("lists.json") && msg.contains("--discard-runtime-lists"), "{msg}");
            assert!(!msg.contains('\n') && msg.len() < 600, "one short line: {msg}");
        }
        // The comparison sees a good file as good.
        std::fs::write(dir.0.join(FILE), r#"{"allow":[{"prefix":"10.0.0.0/8","rate":"5/s","burst":3}]}"#).expect("w");
        RuntimeLists::load(&dir.0).expect("a good file loads");
    }

    #[test]
    fn lists_json_is_written_0640_even_over_a_stale_temp_file() {
        let dir = Dir::new("mode");
        // A temporary file left by a crash, readable by everyone.
        let tmp = dir.0.join("lists.json.tmp");
        std::fs::write(&tmp, "{}").expect("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let mut s = RuntimeLists::load(&dir.0).expect("empty");
        s.store(Lists::default()).expect("store");
        let mode = std::fs::metadata(dir.0.join(FILE)).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "lists.json mode {mode:o}");
    }

    #[test]
    fn discard_moves_an_unusable_file_aside_and_keeps_it() {
        let dir = Dir::new("discard");
        assert_eq!(RuntimeLists::discard_if_unusable(&dir.0).expect("nothing"), None, "no file: nothing to do");
        std::fs::write(dir.0.join(FILE), r#"{"deny":[]}"#).expect("write");
        assert_eq!(RuntimeLists::discard_if_unusable(&dir.0).expect("good"), None, "a good file stays");
        assert!(dir.0.join(FILE).exists());
        for round in 0..2 {
            std::fs::write(dir.0.join(FILE), "{ broken").expect("write");
            let backup = RuntimeLists::discard_if_unusable(&dir.0).expect("moved").expect("a backup");
            assert!(backup.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("lists.json.bad-")));
            assert_eq!(std::fs::read_to_string(&backup).expect("backup"), "{ broken", "round {round}");
            assert!(RuntimeLists::load(&dir.0).expect("starts empty").lists.is_empty());
        }
        let backups = std::fs::read_dir(&dir.0).expect("ls").count();
        assert_eq!(backups, 2, "both backups kept, even within one second");
    }
}
