//! loom model `hybrid_publish_after_index`: the hybrid coordinator's commit order against a
//! legacy reader's header read.
//!
//! inv: HYB_PUBLISH_AFTER_INDEX — a reader that accepts a WAL-index header (copies equal,
//! initialized, checksum good) finds every frame `<= mxFrame` of that header in the hash
//! tables. The coordinator guarantees it by indexing a commit's frames *before*
//! `HybridShmState::update_legacy_shm` + `publish_header` (copy B, `fence(SeqCst)`, copy
//! A); the reader loads copy A, fences, loads copy B, then probes the index.
//!
//! What is modelled with loom atomics, with the orderings of the real code:
//! * the header image (copy A words 0..12, copy B words 12..24): `Relaxed` word accesses
//!   and `fence(SeqCst)` barriers, through the library's own [`publish_header`],
//!   [`load_header_copies`] and [`validate_header_copies`];
//! * per frame, the `aPgno` entry (`Relaxed`) and the hash slot that names it (`Release`
//!   store, `Acquire` load), as `HashSegment::append` / `lookup` do;
//! * the headers come from the library's [`HybridShmState::update_legacy_shm`].
//!
//! Model reduction (sound, as in `fsqlite-wal`'s header model): the writer skips a store
//! whose value equals the word's current value; only the writer stores, so skipping it
//! only removes executions that read an identical value.
//!
//! Buggy twin under `#[should_panic]`: a coordinator that publishes the header before it
//! indexes the frames.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-mvcc --release --test loom_hybrid
//! -- --nocapture` (`LOOM_MAX_PREEMPTIONS`, default 2).
#![cfg(loom)]

use std::cell::Cell;

use fsqlite_mvcc::HybridShmState;
use fsqlite_types::PageSize;
use fsqlite_types::sync_primitives::{Arc, AtomicU32, Instant, Ordering, fence, spawn};
use fsqlite_wal::wal_index::{
    HDR_WORDS, HeaderMemory, WalCkptInfo, WalIndexHdr, load_header_copies, publish_header,
    validate_header_copies,
};

const IMAGE_WORDS: usize = 2 * HDR_WORDS;
/// Frames committed by the model's writer, one per commit.
const FRAMES: usize = 2;
const SALTS: [u32; 2] = [0x5a17_0001, 0x5a17_0002];

/// The page written by frame `f` (1-based).
fn page_of(f: usize) -> u32 {
    10 + f as u32
}

/// The shared memory: the two header copies and a tiny hash index.
struct Shm {
    words: Vec<AtomicU32>,
    /// `aPgno[f - 1]`.
    pgno: Vec<AtomicU32>,
    /// The hash slot naming frame `f` (0 = empty).
    slot: Vec<AtomicU32>,
}

impl HeaderMemory for Shm {
    fn load_word(&self, word: usize) -> u32 {
        self.words[word].load(Ordering::Relaxed)
    }

    fn store_word(&self, word: usize, v: u32) {
        self.words[word].store(v, Ordering::Relaxed);
    }

    fn barrier(&self) {
        fence(Ordering::SeqCst);
    }
}

/// The writer's view (skips stores of unchanged values; see the module docs).
struct WriterView<'a> {
    shm: &'a Shm,
    shadow: Cell<[u32; IMAGE_WORDS]>,
}

impl HeaderMemory for WriterView<'_> {
    fn load_word(&self, word: usize) -> u32 {
        self.shm.load_word(word)
    }

    fn store_word(&self, word: usize, v: u32) {
        let mut s = self.shadow.get();
        if s[word] != v {
            s[word] = v;
            self.shadow.set(s);
            self.shm.store_word(word, v);
        }
    }

    fn barrier(&self) {
        self.shm.barrier();
    }
}

/// The coordinator's state before the model's commits: header with mxFrame 0 published.
fn initial_state() -> (HybridShmState, WalIndexHdr) {
    let mut hdr = WalIndexHdr::default();
    hdr.set_wal_salts(SALTS);
    hdr.set_page_size(PageSize::new(4096).unwrap());
    hdr.seal();
    let mut state = HybridShmState::new(hdr, WalCkptInfo::default());
    state.mark_write_lock_held(Instant::now());
    (state, hdr)
}

fn new_shm(initial: &WalIndexHdr) -> Shm {
    let w = initial.to_words();
    Shm {
        words: (0..IMAGE_WORDS)
            .map(|i| AtomicU32::new(w[i % HDR_WORDS]))
            .collect(),
        pgno: (0..FRAMES).map(|_| AtomicU32::new(0)).collect(),
        slot: (0..FRAMES).map(|_| AtomicU32::new(0)).collect(),
    }
}

/// `HashSegment::append` for frame `f`: aPgno first, then the slot (Release).
fn index_frame(shm: &Shm, f: usize) {
    shm.pgno[f - 1].store(page_of(f), Ordering::Relaxed);
    shm.slot[f - 1].store(f as u32, Ordering::Release);
}

/// One commit of frame `f`: the coordinator's order (index, then publish) or the buggy one.
fn commit(view: &WriterView<'_>, state: &mut HybridShmState, f: usize, index_first: bool) {
    if index_first {
        index_frame(view.shm, f);
    }
    let mut upd = state
        .update_legacy_shm(f as u32, 1, [f as u32, 0], SALTS)
        .unwrap();
    publish_header(view, &mut upd.hdr);
    if !index_first {
        index_frame(view.shm, f);
    }
}

/// The legacy reader: read the header as SQLite does; if accepted, every frame up to its
/// mxFrame must be in the index. inv: HYB_PUBLISH_AFTER_INDEX
fn read(shm: &Shm) {
    let Ok(h) = validate_header_copies(&load_header_copies(shm)) else {
        return; // SQLite retries; nothing was acted on.
    };
    for f in 1..=h.mx_frame as usize {
        let s = shm.slot[f - 1].load(Ordering::Acquire);
        assert_eq!(
            s, f as u32,
            "header with mxFrame {} accepted, frame {f} not indexed",
            h.mx_frame
        );
        assert_eq!(shm.pgno[f - 1].load(Ordering::Relaxed), page_of(f));
    }
}

fn run(index_first: bool) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let it = std::sync::Arc::clone(&iterations);
    let start = std::time::Instant::now();
    builder.check(move || {
        it.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut state, initial) = initial_state();
        let shm = Arc::new(new_shm(&initial));
        let writer_shm = Arc::clone(&shm);
        let w = spawn(move || {
            let view = WriterView {
                shm: &writer_shm,
                shadow: Cell::new(std::array::from_fn(|i| initial.to_words()[i % HDR_WORDS])),
            };
            for f in 1..=FRAMES {
                commit(&view, &mut state, f, index_first);
            }
        });
        read(&shm);
        w.join().unwrap();
        // After the writer, the reader sees the last commit in full.
        read(&shm);
    });
    eprintln!(
        "loom_hybrid(index_first={index_first}): {} executions in {:?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed()
    );
}

#[test]
fn reader_never_sees_unindexed_frames() {
    run(true);
}

#[test]
#[should_panic(expected = "not indexed")]
fn buggy_publish_before_index_is_caught() {
    run(false);
}
