//! # fsqlite-cli
//!
//! The library behind the `fsqlite` command-line tool (docs/cli.md is the user manual).
//! Every command is a function here that returns a serializable report, so the binary is
//! a thin clap front end and tests (or other tools, e.g. a reliability harness) can call
//! the same code.
//!
//! | module | command | what it owns |
//! |---|---|---|
//! | [`files`] | — | the four files of a database (`db`, `-wal`, `-shm`, `.fsqlite-shm`), read-only reads, [`CliError`] and exit codes |
//! | [`probe`] | — | read-only lock probing with `F_OFD_GETLK` (never takes a lock) |
//! | [`inspect`] | `fsqlite inspect` | WAL header and valid prefix, `-shm` header copies and checkpoint info, held locks |
//! | [`verify`] | `fsqlite verify` | one verdict per check: WAL chain, `-shm` against the WAL, backfilled pages, page trailers |
//! | [`checkpoint`] | `fsqlite checkpoint` | a checkpoint through `Wal::checkpoint` and the recovery barrier, with an independent read-back |
//! | [`capture`] | — | a tracing layer that records what the recovery barrier reported |
//! | [`recover`] | `fsqlite recover` | rebuilding the `-shm` from the WAL when no other process is attached |
//! | [`sqlpages`] | — | building the next SQLite-valid page images of a commit with SQLite itself |
//! | [`torture`] | `fsqlite torture` | writer processes killed with SIGKILL and restarted; the acknowledged-commit check |
//! | [`bank_demo`] | `fsqlite demo` (part 2) | concurrent writers (`BEGIN CONCURRENT`) moving money, kill -9, stock SQLite checks the books and runs the same transfers beside it |
//! | [`replication`] | `fsqlite replicate`, `restore`, `replicas list` | continuous replication to S3 or a directory in Litestream 0.5's format, point-in-time restore checked by SQLite |
//! | [`demo`] | `fsqlite demo` | the torture core plus a legacy SQLite reader, recovery, checkpoints and `integrity_check` |
//!
//! Nothing in [`inspect`] or [`verify`] writes a byte or takes a lock: files are opened
//! read-only and locks are only probed. Like any code that opens a database file, these
//! functions must not run in a process that holds SQLite's POSIX locks on the same file
//! (closing a descriptor drops them); see [`probe`].

pub mod bank_demo;
pub mod capture;
pub mod checkpoint;
pub mod demo;
pub mod files;
pub mod inspect;
pub mod probe;
pub mod recover;
pub mod replication;
pub mod sqlpages;
pub mod torture;
pub mod verify;

pub use files::{CliError, DbFiles, ExitStatus};
