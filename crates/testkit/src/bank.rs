//! A "bank": a real SQLite database whose rows can be edited page by page, for concurrent
//! writer tests, crash tests, `fsqlite demo` and benchmarks.
//!
//! The database is made by real SQLite (rusqlite, bundled) in WAL mode, with one table
//!
//! ```sql
//! CREATE TABLE acct(id INTEGER PRIMARY KEY, bal TEXT, pad BLOB);
//! ```
//!
//! holding accounts `1..=N`. Everything about the rows is chosen so that a test can
//! rewrite a balance *inside a page image* (no SQL, no B-tree code) and real SQLite still
//! reads a valid database afterwards:
//!
//! - **One row per page.** `pad` is [`pad_len`]`(page_size)` bytes (3/4 of a page), so a
//!   record is larger than half a page yet small enough to need no overflow page: every
//!   account sits alone on its own table-leaf page, and a transfer between two accounts
//!   touches exactly two pages (plus nothing else: no header, no free list, no parent).
//! - **Fixed width.** `bal` is [`BALANCE_DIGITS`] zero-padded decimal digits of TEXT
//!   (`'000000001000'`), so rewriting a balance never changes the record size (SQL reads it
//!   with `CAST(bal AS INTEGER)`). Balances are in `0..=`[`MAX_BALANCE`].
//! - **A stamp in the pad.** The first [`STAMP_LEN`] bytes of `pad` are the ASCII text
//!   `SSSSSSSSSSSS TTTTTTTTTTTTTTTTTTTT`: a per-account sequence number
//!   ([`STAMP_SEQ_DIGITS`] digits, how many transactions wrote this account) and the id of
//!   the last transaction that wrote it ([`STAMP_TXN_DIGITS`] digits). The rest of `pad` is
//!   zeros. A test bumps the sequence by one per write (read-modify-write), so the
//!   committed versions of one account form a chain, and "transaction `t` wrote account
//!   `a` as version `s`" is checkable later: the account's sequence is `> s`, or `== s`
//!   with stamp `t` ([`Stamp::covers`]). SQL reads the sequence with
//!   `CAST(substr(pad, 1, 12) AS INTEGER)` (SQLite casts a BLOB through TEXT).
//!
//! # Page layout of an account (table-leaf page, SQLite file format §1.6 / §2.1)
//!
//! ```text
//! offset  size  field
//! 0       1     page type 0x0d (table leaf)
//! 1       2     first freeblock
//! 3       2     number of cells: exactly 1
//! 5       2     start of the cell content area
//! 7       1     fragmented free bytes
//! 8       2     cell pointer 0 -> C (big-endian)
//! C       v     payload size P (varint)
//!         v     rowid = account id (varint)
//!         v     record header size H (varint), then serial types:
//!                 0                       id (INTEGER PRIMARY KEY: stored as NULL)
//!                 13 + 2*BALANCE_DIGITS   bal, TEXT of BALANCE_DIGITS bytes
//!                 12 + 2*len(pad)         pad, BLOB
//! B             BALANCE_DIGITS bytes of ASCII digits     <- AccountLayout::balance_offset
//! B+12          pad: the stamp, then zeros               <- AccountLayout::stamp_offset
//! ```
//!
//! [`parse_account_page`] checks every one of these facts (type, one cell, a payload that
//! lies wholly inside the page, exactly those three serial types, digits where digits
//! belong) and returns a clear [`FrankenError::DatabaseCorrupt`] naming what is wrong;
//! it never panics, whatever the bytes.
//!
//! # Use
//!
//! ```no_run
//! use fsqlite_testkit::bank::{self, BankOptions, Stamp};
//!
//! # fn main() -> fsqlite_error::Result<()> {
//! let bank = bank::create(std::path::Path::new("bank.db"), &BankOptions::default())?;
//! let page = bank.accounts.page(7).expect("account 7 exists");
//! // ... read page `page` through the engine under test into `img`, then:
//! # let mut img = vec![0u8; bank.page_size as usize];
//! let bal = bank::read_balance(&img)?;
//! bank::write_balance(&mut img, bal + 5)?;
//! let old = bank::read_stamp(&img)?;
//! bank::write_stamp(&mut img, Stamp { seq: old.seq + 1, txn: 42 })?;
//! // ... commit `img` as page `page`; afterwards SQLite agrees:
//! let books = bank::books(&bank.path)?;
//! books.check(bank.accounts.len() as i64, bank.total())?;
//! # let _ = page; Ok(()) }
//! ```
//!
//! The page map ([`Accounts`]) comes from the database file as SQLite left it (closed, so
//! checkpointed, no `-wal`). It stays right as long as only balances and stamps change:
//! edits of fixed-width fields never move a row.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::PageNumber;
use rusqlite::Connection;

/// The table name.
pub const TABLE: &str = "acct";
/// Digits of a balance (zero-padded decimal TEXT).
pub const BALANCE_DIGITS: usize = 12;
/// Largest balance that fits in [`BALANCE_DIGITS`] digits.
pub const MAX_BALANCE: i64 = 999_999_999_999;
/// Digits of the per-account sequence number in the stamp.
pub const STAMP_SEQ_DIGITS: usize = 12;
/// Digits of the last-writer transaction id in the stamp (any `u64`).
pub const STAMP_TXN_DIGITS: usize = 20;
/// Bytes of the stamp at the start of `pad`: sequence, one space, transaction id.
pub const STAMP_LEN: usize = STAMP_SEQ_DIGITS + 1 + STAMP_TXN_DIGITS;
/// Largest stamp sequence number.
pub const MAX_STAMP_SEQ: u64 = 999_999_999_999;
/// `SELECT count(*), sum(balance), sum(sequence) FROM acct` in one statement (one
/// snapshot): what [`books`] and live readers run.
pub const BOOKS_SQL: &str = "SELECT count(*), sum(CAST(bal AS INTEGER)), \
     sum(CAST(substr(pad, 1, 12) AS INTEGER)) FROM acct";

/// Serial type of the balance: TEXT of [`BALANCE_DIGITS`] bytes.
const BALANCE_SERIAL_TYPE: u64 = 13 + 2 * BALANCE_DIGITS as u64;
/// Table-leaf page type.
const PAGE_TABLE_LEAF: u8 = 0x0d;
/// Table-interior page type.
const PAGE_TABLE_INTERIOR: u8 = 0x05;
/// Size of a leaf page's B-tree header (the cell pointer array follows).
const LEAF_HEADER: usize = 8;
/// Size of an interior page's B-tree header.
const INTERIOR_HEADER: usize = 12;
/// SQLite's rule: a table-leaf payload of at most `usable - 35` bytes is stored locally.
const LOCAL_PAYLOAD_MARGIN: usize = 35;
/// Offset of the database header's page size (big-endian u16, 1 = 65536).
const HDR_PAGE_SIZE: usize = 16;
/// Offset of the database header's reserved-bytes-per-page.
const HDR_RESERVED: usize = 20;
/// The database header's size (page 1 only).
const DB_HEADER_SIZE: usize = 100;

/// How [`create`] builds the bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankOptions {
    /// Number of accounts (ids `1..=accounts`); at least 1.
    pub accounts: u32,
    /// Page size (a power of two in `512..=65536`); default 4096.
    pub page_size: u32,
    /// Opening balance of every account; default 1,000,000.
    pub initial_balance: i64,
}

impl Default for BankOptions {
    fn default() -> Self {
        Self {
            accounts: 64,
            page_size: 4096,
            initial_balance: 1_000_000,
        }
    }
}

/// Length of `pad` for `page_size`: 3/4 of a page (larger than half a usable page, so
/// two rows never share a leaf; smaller than the local-payload limit, so no overflow).
pub fn pad_len(page_size: u32) -> usize {
    page_size as usize / 4 * 3
}

/// Account id -> the table-leaf page that holds it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounts {
    pages: BTreeMap<i64, PageNumber>,
    root: Option<PageNumber>,
}

impl Accounts {
    /// The page of account `id`.
    pub fn page(&self, id: i64) -> Option<PageNumber> {
        self.pages.get(&id).copied()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True if there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// `(id, page)` in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, PageNumber)> + '_ {
        self.pages.iter().map(|(&id, &p)| (id, p))
    }

    /// Account ids in order.
    pub fn ids(&self) -> Vec<i64> {
        self.pages.keys().copied().collect()
    }

    /// The table's root page (an interior page when there are two or more accounts).
    pub fn root(&self) -> Option<PageNumber> {
        self.root
    }
}

/// A bank made by [`create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bank {
    /// The database file.
    pub path: PathBuf,
    /// Its page size.
    pub page_size: u32,
    /// Its size in pages (as SQLite left it).
    pub db_pages: u32,
    /// Opening balance of every account.
    pub initial_balance: i64,
    /// Where each account lives.
    pub accounts: Accounts,
}

impl Bank {
    /// The sum of all balances, which every transfer keeps.
    pub fn total(&self) -> i64 {
        self.initial_balance * self.accounts.len() as i64
    }
}

fn sql_err(path: &Path, what: &str, e: &rusqlite::Error) -> FrankenError {
    FrankenError::internal(format!("SQLite on {}: {what}: {e}", path.display()))
}

fn corrupt(detail: impl std::fmt::Display) -> FrankenError {
    FrankenError::db_corrupt(format!("not a bank account page: {detail}"))
}

/// Creates the bank at `path` (which must not exist) with real SQLite: WAL mode,
/// `opts.accounts` accounts each holding `opts.initial_balance` and the zero stamp; then
/// closes SQLite (the WAL is checkpointed and removed) and scans the file ([`scan`]).
pub fn create(path: &Path, opts: &BankOptions) -> Result<Bank> {
    if opts.accounts == 0 {
        return Err(FrankenError::out_of_range("bank accounts", 0));
    }
    if !(0..=MAX_BALANCE).contains(&opts.initial_balance) {
        return Err(FrankenError::out_of_range(
            "bank opening balance",
            opts.initial_balance,
        ));
    }
    if !opts.page_size.is_power_of_two() || !(512..=65536).contains(&opts.page_size) {
        return Err(FrankenError::out_of_range("bank page size", opts.page_size));
    }
    if path.exists() {
        return Err(FrankenError::cannot_open(
            path,
            "a bank is only created in a new file",
        ));
    }
    let conn = Connection::open(path).map_err(|e| sql_err(path, "open", &e))?;
    let run = |sql: &str| conn.execute_batch(sql).map_err(|e| sql_err(path, sql, &e));
    run(&format!("PRAGMA page_size={};", opts.page_size))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| sql_err(path, "PRAGMA journal_mode=WAL", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(FrankenError::cannot_open(
            path,
            format!("journal_mode stayed {mode}"),
        ));
    }
    run("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal TEXT, pad BLOB); BEGIN;")?;
    let mut pad = vec![0u8; pad_len(opts.page_size)];
    encode_stamp(&mut pad[..STAMP_LEN], Stamp::default())?;
    let bal = format_balance(opts.initial_balance)?;
    {
        let mut insert = conn
            .prepare("INSERT INTO acct(id, bal, pad) VALUES (?1, ?2, ?3)")
            .map_err(|e| sql_err(path, "prepare insert", &e))?;
        for id in 1..=opts.accounts {
            insert
                .execute(rusqlite::params![id, bal, pad])
                .map_err(|e| sql_err(path, "insert account", &e))?;
        }
    }
    run("COMMIT;")?;
    let root: u32 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'acct'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_err(path, "root page of acct", &e))?;
    conn.close().map_err(|(_, e)| sql_err(path, "close", &e))?;
    let accounts = scan(path, root)?;
    if accounts.len() != opts.accounts as usize {
        return Err(FrankenError::internal(format!(
            "{}: SQLite stored {} accounts where {} were inserted",
            path.display(),
            accounts.len(),
            opts.accounts
        )));
    }
    let bytes = read_file(path)?;
    Ok(Bank {
        path: path.to_path_buf(),
        page_size: opts.page_size,
        db_pages: (bytes.len() / opts.page_size as usize) as u32,
        initial_balance: opts.initial_balance,
        accounts,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| FrankenError::io("read", Some(path.to_path_buf()), e))
}

/// Scans the database file at `path` (its main file only: call it when SQLite has closed
/// it, so everything is checkpointed) and maps each account to its page, walking the
/// table B-tree from `root` (`sqlite_schema.rootpage` of `acct`). Every leaf must be an
/// account page ([`parse_account_page`]) and every id must appear once.
pub fn scan(path: &Path, root: u32) -> Result<Accounts> {
    let bytes = read_file(path)?;
    scan_image(&bytes, root).map_err(|e| match e {
        FrankenError::DatabaseCorrupt { detail } => {
            FrankenError::db_corrupt(format!("{}: {detail}", path.display()))
        }
        other => other,
    })
}

/// [`scan`] over a database image in memory.
pub fn scan_image(bytes: &[u8], root: u32) -> Result<Accounts> {
    if bytes.len() < DB_HEADER_SIZE {
        return Err(FrankenError::db_corrupt(format!(
            "a database of {} bytes has no header",
            bytes.len()
        )));
    }
    let raw = u32::from(u16::from_be_bytes([
        bytes[HDR_PAGE_SIZE],
        bytes[HDR_PAGE_SIZE + 1],
    ]));
    let page_size = if raw == 1 { 65536 } else { raw } as usize;
    if !page_size.is_power_of_two() || page_size < 512 {
        return Err(FrankenError::db_corrupt(format!(
            "page size {raw} in the header"
        )));
    }
    let reserved = usize::from(bytes[HDR_RESERVED]);
    let n_pages = bytes.len() / page_size;
    let page = |n: u32| -> Result<&[u8]> {
        let i = n as usize;
        if i == 0 || i > n_pages {
            return Err(FrankenError::db_corrupt(format!(
                "page {n} is outside the {n_pages}-page database"
            )));
        }
        Ok(&bytes[(i - 1) * page_size..i * page_size - reserved])
    };
    let mut out = Accounts {
        pages: BTreeMap::new(),
        root: PageNumber::new(root),
    };
    let mut todo = vec![root];
    let mut visited = 0usize;
    while let Some(n) = todo.pop() {
        visited += 1;
        if visited > n_pages {
            return Err(FrankenError::db_corrupt("the table B-tree has a cycle"));
        }
        let p = page(n)?;
        match p.first() {
            Some(&PAGE_TABLE_INTERIOR) => {
                let cells = usize::from(be16(p, 3)?);
                todo.push(be32(p, 8)?);
                for k in 0..cells {
                    let off = usize::from(be16(p, INTERIOR_HEADER + 2 * k)?);
                    todo.push(be32(p, off)?);
                }
            }
            Some(&PAGE_TABLE_LEAF) => {
                let layout = parse_account_page(p)
                    .map_err(|e| FrankenError::db_corrupt(format!("page {n}: {e}")))?;
                let pn = PageNumber::try_new(n)?;
                if let Some(prev) = out.pages.insert(layout.id, pn) {
                    return Err(FrankenError::db_corrupt(format!(
                        "account {} on pages {prev} and {n}",
                        layout.id
                    )));
                }
            }
            other => {
                return Err(FrankenError::db_corrupt(format!(
                    "page {n} of the acct B-tree has type {other:?}, not a table page"
                )));
            }
        }
    }
    Ok(out)
}

fn be16(p: &[u8], off: usize) -> Result<u16> {
    p.get(off..off + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| corrupt(format!("offset {off} lies past the page end ({})", p.len())))
}

fn be32(p: &[u8], off: usize) -> Result<u32> {
    p.get(off..off + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| corrupt(format!("offset {off} lies past the page end ({})", p.len())))
}

/// An SQLite varint at `off`: `(value, length)`.
fn varint(p: &[u8], off: usize) -> Result<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *p
            .get(off + i)
            .ok_or_else(|| corrupt(format!("a varint at offset {off} runs past the page end")))?;
        if i == 8 {
            return Ok(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(corrupt("unreachable varint length"))
}

/// Where the fields of one account page are (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountLayout {
    /// The account id (the cell's rowid).
    pub id: i64,
    /// Byte offset of the [`BALANCE_DIGITS`] balance digits inside the page.
    pub balance_offset: usize,
    /// Byte offset of the [`STAMP_LEN`]-byte stamp (the start of `pad`).
    pub stamp_offset: usize,
    /// Length of `pad`.
    pub pad_len: usize,
}

/// Checks that `page` (one whole page image, not page 1) is a bank account page and
/// returns where its fields are. Any other bytes give `DatabaseCorrupt` saying why.
pub fn parse_account_page(page: &[u8]) -> Result<AccountLayout> {
    let ty = *page.first().ok_or_else(|| corrupt("an empty page"))?;
    if ty != PAGE_TABLE_LEAF {
        return Err(corrupt(format!(
            "page type {ty:#04x}, expected {PAGE_TABLE_LEAF:#04x} (table leaf)"
        )));
    }
    let cells = be16(page, 3)?;
    if cells != 1 {
        return Err(corrupt(format!("{cells} cells, expected exactly 1")));
    }
    let cell = usize::from(be16(page, LEAF_HEADER)?);
    if cell < LEAF_HEADER + 2 || cell >= page.len() {
        return Err(corrupt(format!(
            "cell pointer {cell} outside the cell area"
        )));
    }
    let (payload, n1) = varint(page, cell)?;
    let (rowid, n2) = varint(page, cell + n1)?;
    let start = cell + n1 + n2;
    let max_local = page.len().saturating_sub(LOCAL_PAYLOAD_MARGIN) as u64;
    if payload > max_local || start as u64 + payload > page.len() as u64 {
        return Err(corrupt(format!(
            "payload of {payload} bytes at offset {start} does not lie wholly in the page"
        )));
    }
    let payload = payload as usize;
    let (hdr_len, mut at) = varint(page, start)?;
    let hdr_len = usize::try_from(hdr_len).unwrap_or(usize::MAX);
    if hdr_len > payload || hdr_len < at {
        return Err(corrupt(format!(
            "record header size {hdr_len} (payload {payload})"
        )));
    }
    let mut types = Vec::with_capacity(3);
    while at < hdr_len {
        let (t, n) = varint(page, start + at)?;
        types.push(t);
        at += n;
        if types.len() > 3 {
            break;
        }
    }
    let pad_type = match types.as_slice() {
        [0, BALANCE_SERIAL_TYPE, t] if *t >= 12 && t % 2 == 0 => *t,
        other => {
            return Err(corrupt(format!(
                "record serial types {other:?}, expected [0, {BALANCE_SERIAL_TYPE}, blob]"
            )));
        }
    };
    if at != hdr_len {
        return Err(corrupt(
            "record header length does not match its serial types",
        ));
    }
    let pad_len = usize::try_from((pad_type - 12) / 2).unwrap_or(usize::MAX);
    if hdr_len + BALANCE_DIGITS + pad_len != payload {
        return Err(corrupt(format!(
            "record of {payload} bytes, its columns need {}",
            hdr_len
                .saturating_add(BALANCE_DIGITS)
                .saturating_add(pad_len)
        )));
    }
    if pad_len < STAMP_LEN {
        return Err(corrupt(format!(
            "pad of {pad_len} bytes, shorter than a stamp"
        )));
    }
    let id = i64::try_from(rowid).map_err(|_| corrupt(format!("rowid {rowid}")))?;
    let balance_offset = start + hdr_len;
    let layout = AccountLayout {
        id,
        balance_offset,
        stamp_offset: balance_offset + BALANCE_DIGITS,
        pad_len,
    };
    parse_digits(
        &page[balance_offset..balance_offset + BALANCE_DIGITS],
        "balance",
    )?;
    Ok(layout)
}

fn parse_digits(b: &[u8], what: &str) -> Result<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(corrupt(format!(
            "the {what} is {:?}, not {} ASCII digits",
            String::from_utf8_lossy(b),
            b.len()
        )));
    }
    b.iter()
        .try_fold(0u64, |v, &d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| corrupt(format!("the {what} overflows u64")))
}

fn format_balance(v: i64) -> Result<String> {
    if !(0..=MAX_BALANCE).contains(&v) {
        return Err(FrankenError::out_of_range(
            format!("bank balance (0..={MAX_BALANCE})"),
            v,
        ));
    }
    Ok(format!("{v:0BALANCE_DIGITS$}"))
}

/// The account id stored on an account page.
pub fn read_account_id(page: &[u8]) -> Result<i64> {
    parse_account_page(page).map(|l| l.id)
}

/// The balance stored on an account page.
pub fn read_balance(page: &[u8]) -> Result<i64> {
    let l = parse_account_page(page)?;
    let v = parse_digits(
        &page[l.balance_offset..l.balance_offset + BALANCE_DIGITS],
        "balance",
    )?;
    i64::try_from(v).map_err(|_| corrupt(format!("balance {v}")))
}

/// Rewrites the balance of an account page in place (`0..=MAX_BALANCE`; the record size
/// stays the same). The page is checked first and left untouched on any error.
pub fn write_balance(page: &mut [u8], new: i64) -> Result<()> {
    let l = parse_account_page(page)?;
    let text = format_balance(new)?;
    page[l.balance_offset..l.balance_offset + BALANCE_DIGITS].copy_from_slice(text.as_bytes());
    Ok(())
}

/// The stamp at the start of an account's `pad` (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    /// How many transactions have written this account (0 when the bank is made).
    pub seq: u64,
    /// The id of the last one (0 when the bank is made).
    pub txn: u64,
}

impl Stamp {
    /// Whether an account whose stamp is `self` contains the write "transaction `txn`
    /// made this account's version `seq`": that version or a later one is there.
    pub fn covers(self, seq: u64, txn: u64) -> bool {
        self.seq > seq || (self.seq == seq && self.txn == txn)
    }
}

fn encode_stamp(dst: &mut [u8], s: Stamp) -> Result<()> {
    if s.seq > MAX_STAMP_SEQ {
        return Err(FrankenError::out_of_range("bank stamp sequence", s.seq));
    }
    let mut text = String::with_capacity(STAMP_LEN);
    let _ = write!(
        text,
        "{:0w1$} {:0w2$}",
        s.seq,
        s.txn,
        w1 = STAMP_SEQ_DIGITS,
        w2 = STAMP_TXN_DIGITS
    );
    debug_assert_eq!(text.len(), STAMP_LEN);
    dst.copy_from_slice(text.as_bytes());
    Ok(())
}

/// Decodes a stamp from its [`STAMP_LEN`] bytes (e.g. `substr(pad, 1, 33)` read by SQL).
pub fn decode_stamp(b: &[u8]) -> Result<Stamp> {
    if b.len() < STAMP_LEN || b[STAMP_SEQ_DIGITS] != b' ' {
        return Err(corrupt(format!(
            "stamp {:?} is not '<{STAMP_SEQ_DIGITS} digits> <{STAMP_TXN_DIGITS} digits>'",
            String::from_utf8_lossy(&b[..b.len().min(STAMP_LEN)])
        )));
    }
    Ok(Stamp {
        seq: parse_digits(&b[..STAMP_SEQ_DIGITS], "stamp sequence")?,
        txn: parse_digits(&b[STAMP_SEQ_DIGITS + 1..STAMP_LEN], "stamp transaction")?,
    })
}

/// The stamp of an account page.
pub fn read_stamp(page: &[u8]) -> Result<Stamp> {
    let l = parse_account_page(page)?;
    decode_stamp(&page[l.stamp_offset..l.stamp_offset + STAMP_LEN])
}

/// Rewrites the stamp of an account page in place (checked first; untouched on error).
pub fn write_stamp(page: &mut [u8], s: Stamp) -> Result<()> {
    let l = parse_account_page(page)?;
    encode_stamp(&mut page[l.stamp_offset..l.stamp_offset + STAMP_LEN], s)
}

/// One account as SQLite reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountRow {
    /// `id`.
    pub id: i64,
    /// `CAST(bal AS INTEGER)`.
    pub balance: i64,
    /// The stamp decoded from `pad`.
    pub stamp: Stamp,
}

/// What SQLite says about the books.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Books {
    /// `count(*)`.
    pub accounts: i64,
    /// `sum(CAST(bal AS INTEGER))`.
    pub total: i64,
    /// Sum of the stamp sequence numbers (two per committed transfer).
    pub writes: i64,
    /// `PRAGMA integrity_check`, rows joined by newlines (`"ok"` when sound).
    pub integrity: String,
}

impl Books {
    /// `Ok` when the integrity check says `ok` and there are `accounts` accounts holding
    /// `total` in all; otherwise an error that says what differs.
    pub fn check(&self, accounts: i64, total: i64) -> Result<()> {
        if self.integrity != "ok" {
            return Err(FrankenError::db_corrupt(format!(
                "PRAGMA integrity_check of the bank: {}",
                self.integrity
            )));
        }
        if self.accounts != accounts || self.total != total {
            return Err(FrankenError::internal(format!(
                "the books do not balance: {} accounts holding {} (expected {accounts} \
                 holding {total})",
                self.accounts, self.total
            )));
        }
        Ok(())
    }
}

/// Checks the books with real SQLite on the file at `path` (with its `-wal`, if any):
/// [`BOOKS_SQL`] and `PRAGMA integrity_check`. The connection is opened without
/// checkpoint-on-close ([`crate::sqlite::open_existing`]), so the WAL is left alone.
pub fn books(path: &Path) -> Result<Books> {
    let conn = crate::sqlite::open_existing(path)?;
    let (accounts, total, writes) = conn
        .query_row(BOOKS_SQL, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            ))
        })
        .map_err(|e| sql_err(path, BOOKS_SQL, &e))?;
    let integrity = {
        let mut stmt = conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| sql_err(path, "PRAGMA integrity_check", &e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sql_err(path, "PRAGMA integrity_check", &e))?;
        let mut lines = Vec::new();
        for r in rows {
            lines.push(r.map_err(|e| sql_err(path, "PRAGMA integrity_check", &e))?);
        }
        lines.join("\n")
    };
    conn.close().map_err(|(_, e)| sql_err(path, "close", &e))?;
    Ok(Books {
        accounts,
        total,
        writes,
        integrity,
    })
}

/// Every account as real SQLite reads it (id order), stamps decoded from `pad`.
pub fn rows(path: &Path) -> Result<Vec<AccountRow>> {
    let conn = crate::sqlite::open_existing(path)?;
    let sql = "SELECT id, CAST(bal AS INTEGER), substr(pad, 1, 33) FROM acct ORDER BY id";
    let out = {
        let mut stmt = conn.prepare(sql).map_err(|e| sql_err(path, sql, &e))?;
        let it = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| sql_err(path, sql, &e))?;
        let mut out = Vec::new();
        for r in it {
            let (id, balance, stamp) = r.map_err(|e| sql_err(path, sql, &e))?;
            out.push(AccountRow {
                id,
                balance,
                stamp: decode_stamp(&stamp)
                    .map_err(|e| FrankenError::db_corrupt(format!("account {id}: {e}")))?,
            });
        }
        out
    };
    conn.close().map_err(|(_, e)| sql_err(path, "close", &e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
    use fsqlite_types::Cx;
    use fsqlite_vfs::UnixVfs;

    use super::*;
    use crate::rng::Rng;

    fn small(dir: &Path) -> Bank {
        create(
            &dir.join("bank.db"),
            &BankOptions {
                accounts: 10,
                ..BankOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn bank_layout_one_row_per_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let bank = small(dir.path());
        assert_eq!(bank.accounts.len(), 10);
        assert!(!crate::sqlite::wal_path(&bank.path).exists());
        let img = std::fs::read(&bank.path).unwrap();
        let ps = bank.page_size as usize;
        let mut pages: Vec<u32> = bank.accounts.iter().map(|(_, p)| p.get()).collect();
        pages.sort_unstable();
        pages.dedup();
        assert_eq!(pages.len(), 10, "one page per account");
        for (id, p) in bank.accounts.iter() {
            let page = &img[(p.get() as usize - 1) * ps..p.get() as usize * ps];
            assert_eq!(read_account_id(page).unwrap(), id);
            assert_eq!(read_balance(page).unwrap(), 1_000_000);
            assert_eq!(read_stamp(page).unwrap(), Stamp::default());
        }
        let b = books(&bank.path).unwrap();
        b.check(10, bank.total()).unwrap();
        assert_eq!(b.writes, 0);
        // Other page sizes keep one row per leaf as well.
        for ps in [512u32, 65536] {
            let bank = create(
                &dir.path().join(format!("b{ps}.db")),
                &BankOptions {
                    accounts: 5,
                    page_size: ps,
                    initial_balance: 7,
                },
            )
            .unwrap();
            assert_eq!(bank.accounts.len(), 5);
            let mut p: Vec<_> = bank.accounts.iter().map(|(_, p)| p).collect();
            p.dedup();
            assert_eq!(p.len(), 5);
        }
    }

    #[test]
    fn bank_edits_in_place_and_rejects_other_pages() {
        let dir = tempfile::tempdir().unwrap();
        let bank = small(dir.path());
        let img = std::fs::read(&bank.path).unwrap();
        let ps = bank.page_size as usize;
        let p = bank.accounts.page(3).unwrap().get() as usize;
        let mut page = img[(p - 1) * ps..p * ps].to_vec();
        let before = page.clone();
        write_balance(&mut page, 123).unwrap();
        write_stamp(
            &mut page,
            Stamp {
                seq: 9,
                txn: u64::MAX,
            },
        )
        .unwrap();
        assert_eq!(read_balance(&page).unwrap(), 123);
        assert_eq!(
            read_stamp(&page).unwrap(),
            Stamp {
                seq: 9,
                txn: u64::MAX
            }
        );
        let changed = page.iter().zip(&before).filter(|(a, b)| a != b).count();
        assert!(
            changed <= BALANCE_DIGITS + STAMP_LEN,
            "{changed} bytes changed"
        );
        // Out-of-range values leave the page alone.
        let kept = page.clone();
        assert!(write_balance(&mut page, -1).is_err());
        assert!(write_balance(&mut page, MAX_BALANCE + 1).is_err());
        assert!(
            write_stamp(
                &mut page,
                Stamp {
                    seq: MAX_STAMP_SEQ + 1,
                    txn: 0
                }
            )
            .is_err()
        );
        assert_eq!(page, kept);
        // Page 1 (schema), the interior root, zeros, a short buffer: clear errors.
        let root = bank.accounts.root().unwrap().get() as usize;
        for (what, bytes) in [
            ("page 1", img[..ps].to_vec()),
            ("root", img[(root - 1) * ps..root * ps].to_vec()),
            ("zeros", vec![0u8; ps]),
            ("short", page[..20].to_vec()),
            ("empty", Vec::new()),
        ] {
            let mut b = bytes;
            let e = read_balance(&b).unwrap_err();
            assert!(
                matches!(e, FrankenError::DatabaseCorrupt { .. }),
                "{what}: {e}"
            );
            assert!(write_balance(&mut b, 5).is_err(), "{what}");
        }
        // A non-digit in the balance is named.
        let mut bad = page.clone();
        let l = parse_account_page(&bad).unwrap();
        bad[l.balance_offset + 3] = b'x';
        let e = read_balance(&bad).unwrap_err().to_string();
        assert!(e.contains("balance"), "{e}");
        // Random damage never panics.
        let mut rng = Rng::new(0xba_4c);
        for _ in 0..3000 {
            let mut m = page.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(64 + l.stamp_offset as u64 + 40) as usize;
                m[at.min(ps - 1)] = rng.next_u64() as u8;
            }
            let _ = read_balance(&m);
            let _ = read_stamp(&m);
            let _ = write_balance(&mut m, 1);
        }
    }

    /// A balance edited in a page image and committed through the coordinator is what
    /// SQLite reads, before and after the coordinator's checkpoint on close.
    #[test]
    fn bank_edit_committed_via_coordinator_is_read_by_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let bank = small(dir.path());
        let cx = Cx::new();
        let opts = CoordinatorOptions {
            probe_timeout: Duration::from_millis(500),
            kill_at: None,
            ..CoordinatorOptions::default()
        };
        let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &bank.path, opts).unwrap();
        let ps = bank.page_size as usize;
        let (a, b) = (
            bank.accounts.page(2).unwrap(),
            bank.accounts.page(9).unwrap(),
        );
        let mut pa = vec![0u8; ps];
        let mut pb = vec![0u8; ps];
        coord.read_page(&cx, a, &mut pa).unwrap();
        coord.read_page(&cx, b, &mut pb).unwrap();
        let (ba, bb) = (read_balance(&pa).unwrap(), read_balance(&pb).unwrap());
        write_balance(&mut pa, ba - 250).unwrap();
        write_balance(&mut pb, bb + 250).unwrap();
        write_stamp(&mut pa, Stamp { seq: 1, txn: 77 }).unwrap();
        write_stamp(&mut pb, Stamp { seq: 1, txn: 77 }).unwrap();
        let size = coord.db_size(&cx).unwrap();
        coord.commit(&cx, &[(a, &pa), (b, &pb)], size).unwrap();
        let check = || {
            let bk = books(&bank.path).unwrap();
            bk.check(10, bank.total()).unwrap();
            assert_eq!(bk.writes, 2);
            let rows = rows(&bank.path).unwrap();
            assert_eq!(rows[1].balance, 1_000_000 - 250);
            assert_eq!(rows[8].balance, 1_000_000 + 250);
            assert_eq!(rows[1].stamp, Stamp { seq: 1, txn: 77 });
            assert_eq!(rows[0].stamp, Stamp::default());
        };
        check();
        coord.close(&cx).unwrap();
        check();
        // The page map still holds after the checkpoint.
        let root = bank.accounts.root().unwrap().get();
        assert_eq!(scan(&bank.path, root).unwrap(), bank.accounts);
    }
}
