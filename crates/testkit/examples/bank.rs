//! A bank made by real SQLite, one account per page, and a transfer made by editing two
//! page images directly; then stock SQLite checks the books.
//!
//! `cargo run -p fsqlite-testkit --example bank`

use fsqlite_testkit::bank::{self, BankOptions};

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bk = bank::create(
        &dir.path().join("bank.db"),
        &BankOptions {
            accounts: 8,
            ..BankOptions::default()
        },
    )
    .expect("SQLite makes the bank");
    println!(
        "{} accounts on pages {:?}, {} pages in all",
        bk.accounts.len(),
        bk.accounts.iter().map(|(_, p)| p.get()).collect::<Vec<_>>(),
        bk.db_pages
    );
    // Move 250 from account 1 to account 2 by rewriting their pages in the file.
    let ps = bk.page_size as usize;
    let mut bytes = std::fs::read(&bk.path).expect("read the database");
    for (id, delta) in [(1i64, -250i64), (2, 250)] {
        let p = bk.accounts.page(id).expect("the account exists").get() as usize;
        let page = &mut bytes[(p - 1) * ps..p * ps];
        let bal = bank::read_balance(page).expect("a balance");
        bank::write_balance(page, bal + delta).expect("the new balance fits");
    }
    std::fs::write(&bk.path, &bytes).expect("write the database");
    let books = bank::books(&bk.path).expect("SQLite reads the bank");
    books
        .check(bk.accounts.len() as i64, bk.total())
        .expect("the books balance");
    println!("books: {books:?}");
}
