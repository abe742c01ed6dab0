//! loom model `index_header_publish` (TESTING.md §2.8 (d)): the WAL-index header
//! publish / read protocol of `fsqlite_wal::wal_index` over an image of loom atomics.
//!
//! inv: HDR_NEVER_TORN — a reader that finds copy A == copy B with `isInit != 0` holds
//! exactly one of the published headers, never a mix. The property is checked on the
//! raw copies, *without* the checksum (which would otherwise hide a torn read), and again
//! on what [`validate_header_copies`] accepts.
//!
//! The writer publishes header 0 before the threads start (the initial image), then
//! headers 1 and 2 with the library's [`publish_header`]; readers use the library's
//! [`load_header_copies`]. Word accesses are `Relaxed` and the barrier is
//! `fence(SeqCst)`, exactly the orderings of the `ShmRegion` implementation, so loom
//! explores the stale values a weakly ordered machine may return.
//!
//! Model reduction (sound): the writer's view skips a store whose value equals the word's
//! current value. Reading such a store would give the same value and, at most, extra
//! synchronization, which only removes outcomes; skipping it keeps loom's per-load
//! branching to the words a publish really changes. The 1-reader model publishes
//! realistic commits (7 changed words); the 2-reader model changes only `iChange` and
//! `aCksum` (3 words) to stay within the time budget at bound 2 (and 3).
//!
//! Buggy twins under `#[should_panic]`: a writer that writes copy A first, and a reader
//! that reads copy B first. Both must be caught.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-wal --release --test
//! loom_index_header -- --nocapture` (`LOOM_MAX_PREEMPTIONS`, default 2).
#![cfg(loom)]

use std::cell::Cell;
use std::time::Instant;

use fsqlite_types::sync_primitives::{Arc, AtomicU32, Ordering, fence, spawn};
use fsqlite_wal::wal_index::{
    COPY_A_WORD, COPY_B_WORD, HDR_WORDS, HeaderMemory, WalIndexHdr, load_header_copies,
    publish_header, validate_header_copies,
};

const IMAGE_WORDS: usize = 2 * HDR_WORDS;

/// Which header words change from one publish to the next. Every changed word multiplies
/// loom's per-load branching, so the models choose how realistic a "commit" is.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// What a real commit changes: `iChange`, `mxFrame`, `nPage`, `aFrameCksum[2]` and
    /// therefore `aCksum[2]` (7 of 12 words).
    Commit,
    /// Only `iChange` and therefore `aCksum[2]` (3 words): the smallest header change.
    Minimal,
}

/// Header `generation` before sealing (publish seals it).
fn unsealed(change: Change, generation: u32) -> WalIndexHdr {
    let g = match change {
        Change::Commit => generation,
        Change::Minimal => 0,
    };
    WalIndexHdr {
        i_change: 100 + generation,
        sz_page: 4096,
        mx_frame: 10 + 5 * g,
        n_page: 40 + g,
        a_frame_cksum: [0x1111_2222 + g, 0x3333_4444 + 3 * g],
        a_salt: [0x0102_0304, 0x0506_0708],
        ..WalIndexHdr::default()
    }
}

fn sealed(change: Change, generation: u32) -> WalIndexHdr {
    let mut h = unsealed(change, generation);
    h.seal();
    h
}

fn published(change: Change) -> [WalIndexHdr; 3] {
    [sealed(change, 0), sealed(change, 1), sealed(change, 2)]
}

fn image_words(h: &WalIndexHdr) -> [u32; IMAGE_WORDS] {
    let w = h.to_words();
    std::array::from_fn(|i| w[i % HDR_WORDS])
}

/// The shared header image (copy A words 0..12, copy B words 12..24).
struct Image {
    words: Vec<AtomicU32>,
}

impl Image {
    fn new(initial: &WalIndexHdr) -> Self {
        Self {
            words: image_words(initial)
                .iter()
                .map(|&w| AtomicU32::new(w))
                .collect(),
        }
    }
}

impl HeaderMemory for Image {
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

/// The writer's view: same accesses, but a store of an unchanged value is skipped (see the
/// module docs; only the writer stores, so its shadow is the current value).
struct WriterView {
    image: Arc<Image>,
    shadow: Cell<[u32; IMAGE_WORDS]>,
}

impl HeaderMemory for WriterView {
    fn load_word(&self, word: usize) -> u32 {
        self.image.load_word(word)
    }

    fn store_word(&self, word: usize, v: u32) {
        let mut s = self.shadow.get();
        if s[word] != v {
            s[word] = v;
            self.shadow.set(s);
            self.image.store_word(word, v);
        }
    }

    fn barrier(&self) {
        self.image.barrier();
    }
}

/// The bug the twin writer has: copy A first (breaks inv: HDR_PUBLISH_B_THEN_A).
fn publish_a_first<M: HeaderMemory>(mem: &M, hdr: &mut WalIndexHdr) {
    hdr.seal();
    let w = hdr.to_words();
    for (i, v) in w.iter().enumerate() {
        mem.store_word(COPY_A_WORD + i, *v);
    }
    mem.barrier();
    for (i, v) in w.iter().enumerate() {
        mem.store_word(COPY_B_WORD + i, *v);
    }
}

/// The bug the twin reader has: copy B first (breaks inv: HDR_READ_A_THEN_B).
fn load_b_first<M: HeaderMemory>(mem: &M) -> [WalIndexHdr; 2] {
    let b: [u32; HDR_WORDS] = std::array::from_fn(|i| mem.load_word(COPY_B_WORD + i));
    mem.barrier();
    let a: [u32; HDR_WORDS] = std::array::from_fn(|i| mem.load_word(COPY_A_WORD + i));
    [WalIndexHdr::from_words(&a), WalIndexHdr::from_words(&b)]
}

/// The reader's check (inv: HDR_NEVER_TORN).
fn check_read(change: Change, copies: &[WalIndexHdr; 2]) {
    let all = published(change);
    let [a, b] = copies;
    if a == b && a.is_init != 0 {
        assert!(
            all.contains(a),
            "torn header accepted (copies equal): {a:?}"
        );
    }
    if let Ok(h) = validate_header_copies(copies) {
        assert!(all.contains(&h), "torn header passed validation: {h:?}");
    }
}

type Publish = fn(&WriterView, &mut WalIndexHdr);
type Load = fn(&Image) -> [WalIndexHdr; 2];

fn publish_ok(m: &WriterView, h: &mut WalIndexHdr) {
    publish_header(m, h);
}

fn publish_bad(m: &WriterView, h: &mut WalIndexHdr) {
    publish_a_first(m, h);
}

fn load_ok(m: &Image) -> [WalIndexHdr; 2] {
    load_header_copies(m)
}

fn load_bad(m: &Image) -> [WalIndexHdr; 2] {
    load_b_first(m)
}

/// Runs the model: a writer thread publishing headers 1 and 2, the main thread reading,
/// and `extra_readers` more reader threads. Prints the iteration count and time.
fn run(name: &str, change: Change, publish: Publish, load: Load, extra_readers: usize) {
    // The precondition of the argument in the module docs: no word takes a value in
    // header 2 that it had in header 0 but not in header 1 (no A-B-A).
    let [h0, h1, h2] = published(change).map(|h| h.to_words());
    for i in 0..HDR_WORDS {
        assert!(
            !(h0[i] == h2[i] && h0[i] != h1[i]),
            "word {i} repeats a value"
        );
    }
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let bound = builder.preemption_bound;
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&iterations);
    let start = Instant::now();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let image = Arc::new(Image::new(&sealed(change, 0)));
        let writer = WriterView {
            image: Arc::clone(&image),
            shadow: Cell::new(image_words(&sealed(change, 0))),
        };
        let w = spawn(move || {
            for generation in 1..=2 {
                let mut h = unsealed(change, generation);
                publish(&writer, &mut h);
            }
        });
        let readers: Vec<_> = (0..extra_readers)
            .map(|_| {
                let img = Arc::clone(&image);
                spawn(move || check_read(change, &load(&img)))
            })
            .collect();
        check_read(change, &load(&image));
        for r in readers {
            r.join().unwrap();
        }
        w.join().unwrap();
    });
    println!(
        "loom model {name} ({change:?} headers): preemption bound {bound:?}, {} iterations, {:.2?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed()
    );
}

/// Writer (2 commits) + 1 reader, realistic commits.
#[test]
fn index_header_publish_one_reader() {
    run(
        "index_header_publish(writer + 1 reader)",
        Change::Commit,
        publish_ok,
        load_ok,
        0,
    );
}

/// Writer (2 publishes) + 2 readers (TESTING.md's shape), minimal header changes to keep
/// the state space in budget.
#[test]
fn index_header_publish_two_readers() {
    run(
        "index_header_publish(writer + 2 readers)",
        Change::Minimal,
        publish_ok,
        load_ok,
        1,
    );
}

#[test]
#[should_panic(expected = "torn header accepted")]
fn buggy_twin_writer_copy_a_first() {
    run(
        "buggy: copy A written first",
        Change::Minimal,
        publish_bad,
        load_ok,
        0,
    );
}

#[test]
#[should_panic(expected = "torn header accepted")]
fn buggy_twin_reader_copy_b_first() {
    run(
        "buggy: copy B read first",
        Change::Minimal,
        publish_ok,
        load_bad,
        0,
    );
}
