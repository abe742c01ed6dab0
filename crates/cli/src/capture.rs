//! A tracing layer that records what the checkpoint code reports about its recovery
//! barrier, so `fsqlite checkpoint` can print it.
//!
//! `fsqlite-wal` logs one debug event per checkpoint copy, target
//! [`CHECKPOINT_TARGET`], with the numeric fields `pages` (pages copied, each then read
//! back and verified against its WAL frame's xxh3-128 digest), `runs`, `wal_reads`,
//! `read_us`, `write_us`, `sync_us` (the full fsync of the database), `verify_us` and
//! `total_us`. [`CaptureLayer`] keeps the numeric fields of every event on that target in
//! a process-wide list; [`take`] drains it. The binary installs the layer with a
//! per-layer filter so these debug events are seen whatever `-v`/`RUST_LOG` say.
//!
//! Field names are the WAL crate's; a field that is absent simply reads as `None`.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// The tracing target of checkpoint events.
pub const CHECKPOINT_TARGET: &str = "fsqlite.wal.checkpoint";

/// One captured event: its message and numeric fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedEvent {
    /// The event's message.
    pub message: String,
    /// Numeric fields by name.
    pub fields: BTreeMap<String, u64>,
}

impl CapturedEvent {
    /// A numeric field.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.fields.get(name).copied()
    }
}

fn store() -> &'static Mutex<Vec<CapturedEvent>> {
    static STORE: OnceLock<Mutex<Vec<CapturedEvent>>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Drains the captured events.
pub fn take() -> Vec<CapturedEvent> {
    store()
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// Records events on [`CHECKPOINT_TARGET`] (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureLayer;

struct Visitor<'a>(&'a mut CapturedEvent);

impl Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.fields.insert(field.name().to_owned(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.0.fields.insert(field.name().to_owned(), v);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0
            .fields
            .insert(field.name().to_owned(), u64::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0.message);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != CHECKPOINT_TARGET {
            return;
        }
        let mut e = CapturedEvent::default();
        event.record(&mut Visitor(&mut e));
        if let Ok(mut v) = store().lock() {
            v.push(e);
        }
    }
}
