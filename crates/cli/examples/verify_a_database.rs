//! `fsqlite verify` as a library call: a real SQLite database (made by the testkit's
//! bank, in WAL mode), checked by `fsqlite_cli::verify::verify`, and the report printed
//! as the command prints it.
//!
//! `cargo run -p fsqlite-cli --example verify_a_database`

use fsqlite_cli::verify::{render_text, verify};
use fsqlite_testkit::bank::{self, BankOptions};

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bank = bank::create(&dir.path().join("app.db"), &BankOptions::default())
        .expect("SQLite makes the database");
    let report = verify(&bank.path).expect("verify runs");
    print!("{}", render_text(&report));
    assert!(report.ok, "a database SQLite just made verifies");
}
