//! A bounded cache of decoded task records, keyed by the exact bytes they
//! were decoded from.
//!
//! Decoding a record (JSON, then the domain's validation of every field) is
//! most of what a list page costs, and the same records are read again and
//! again: a client polling its first page reads the same fifty every time.
//! The store uses the cache for first pages only (no cursor): pages after a
//! cursor are mostly read once, and there its lookups cost more CPU than
//! they saved.
//! An entry keeps the bytes it was decoded from and answers only a read of
//! equal bytes. Decoding is a function of the id and the bytes alone, so a
//! hit is exactly what decoding would give, whoever wrote the record: this
//! process, a peer process sharing the file in multi-writer mode, an import
//! or a restore. Nothing has to invalidate an entry; a changed record simply
//! misses, and its entry ages out. Unreadable records are never cached: each
//! read reports them (`StorageError::corrupt` logs and counts).
//!
//! A record enters the cache the second time it is decoded, not the first:
//! keeping a decoded task costs a copy, a clone and an eviction (a tenth to
//! a third of a decode, measured), which a page read once (a client walking
//! every page) would pay for nothing. [`Doorkeeper`] remembers which ids
//! were decoded lately.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::keys::task_key_name;
use crate::domain::{Task, TaskId};
use crate::storage::StoreResult;
use crate::storage::codec::decode_task;

/// What the cache may hold, in (estimated) bytes. A list page of fifty
/// typical tasks weighs about 40 KiB here, so this keeps the last twenty or
/// so pages read often: the pages clients poll, not a crawl of everything.
/// Small on purpose: every lookup probes the cache's tables, and at 4 MiB
/// pages read at random (mostly misses) cost 17-40 % more CPU than with no
/// cache at all; the profile put it in memory stalls in those tables and in
/// counters every thread wrote (the benchmark's `cursor=…` phase;
/// docs/performance.md#decoded-task-cache).
pub(super) const DECODED_CACHE_BYTES: u64 = 1 << 20;

/// A decoded task and the record it came from.
struct Entry {
    bytes: Box<[u8]>,
    task: Task,
}

/// An entry's weight: its record twice (the bytes kept, and the decoded
/// strings, which are most of a record) and the fixed parts of both.
#[derive(Clone)]
struct ByRecordSize;

impl Weighter<TaskId, Arc<Entry>> for ByRecordSize {
    fn weight(&self, _: &TaskId, e: &Arc<Entry>) -> u64 {
        2 * e.bytes.len() as u64 + 160
    }
}

pub(super) struct DecodedTasks {
    cache: Cache<TaskId, Arc<Entry>, ByRecordSize>,
    seen: Doorkeeper,
}

/// The ids decoded lately, as a Bloom filter: two bits per id, set on its
/// first decode and tested on the next. It may answer "seen" for an id that
/// was not (that id is cached one decode early), never the reverse until it
/// is cleared, which it is after as many ids as its bits hold at a quarter
/// load (then every id starts over, one decode more each).
struct Doorkeeper {
    words: Box<[AtomicU64]>,
    marked: AtomicUsize,
}

impl Doorkeeper {
    const BITS: usize = 1 << 17;

    fn new() -> Self {
        Self {
            words: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            marked: AtomicUsize::new(0),
        }
    }

    /// Whether `id` was marked since the last clearing; marks it if not.
    fn seen_or_mark(&self, id: TaskId) -> bool {
        // Not the id's bits as they are: of a UUIDv7's 74 "random" bits, 42
        // are a counter that steps by one within a millisecond (the uuid
        // crate's `now_v7`), so ids made together differ in a few low bits.
        // splitmix64's finaliser spreads every bit over the whole word.
        let v = id.as_u128();
        let mut h = (v as u64) ^ ((v >> 64) as u64);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let bits = [h as usize % Self::BITS, (h >> 17) as usize % Self::BITS];
        let is_set = |b: usize| self.words[b / 64].load(Ordering::Relaxed) & (1 << (b % 64)) != 0;
        if bits.iter().all(|&b| is_set(b)) {
            return true;
        }
        // Counted one mark in 64 (by six bits of the hash), so that the
        // threads do not all write one counter on every miss.
        if h >> 58 == 0 && self.marked.fetch_add(64, Ordering::Relaxed) >= Self::BITS / 4 {
            self.marked.store(0, Ordering::Relaxed);
            for w in &*self.words {
                w.store(0, Ordering::Relaxed);
            }
        }
        // Plain stores, not read-modify-writes: a bit another thread sets
        // at the same moment may be lost, which only delays caching that id.
        for b in bits {
            let w = &self.words[b / 64];
            w.store(
                w.load(Ordering::Relaxed) | (1 << (b % 64)),
                Ordering::Relaxed,
            );
        }
        false
    }
}

impl DecodedTasks {
    /// A cache of at most `capacity` bytes (by the estimate above).
    pub(super) fn new(capacity: u64) -> Self {
        // quick_cache sizes its tables from an expected count of entries.
        let expected = (capacity / 600).max(16) as usize;
        Self {
            cache: Cache::with_weighter(expected, capacity, ByRecordSize),
            seen: Doorkeeper::new(),
        }
    }

    /// The task the record `bytes` under `key` holds (see
    /// `codec::decode_task`): from the cache when the same bytes were
    /// decoded before, else decoded, and remembered if this id was decoded
    /// lately too.
    pub(super) fn decode(&self, key: &[u8], id: TaskId, bytes: &[u8]) -> StoreResult<Task> {
        if let Some(e) = self.cache.get(&id)
            && *e.bytes == *bytes
        {
            return Ok(e.task.clone());
        }
        let task = decode_task(task_key_name(key), id, bytes)?;
        if !self.seen.seen_or_mark(id) {
            return Ok(task);
        }
        self.cache.insert(
            id,
            Arc::new(Entry {
                bytes: bytes.into(),
                task: task.clone(),
            }),
        );
        Ok(task)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PrincipalName, TaskFields, Title};
    use crate::storage::codec::encode_task;
    use crate::storage::redb::keys::task_key;

    fn task(title: &str) -> Task {
        let fields = TaskFields {
            title: Title::parse(title).unwrap(),
            description: None,
            status: Default::default(),
            priority: Default::default(),
            due_at: None,
            tags: Default::default(),
        };
        Task::create(fields)
    }

    #[test]
    fn a_hit_needs_the_same_bytes_and_a_changed_record_is_decoded_again() {
        let cache = DecodedTasks::new(DECODED_CACHE_BYTES);
        let owner = PrincipalName::parse("alice").unwrap();
        let first = task("first");
        let key = task_key(&owner, first.id);
        let bytes = encode_task(&first);
        assert_eq!(cache.decode(&key, first.id, &bytes).unwrap(), first);
        assert_eq!(cache.decode(&key, first.id, &bytes).unwrap(), first);

        // Another writer (this process or a peer) changed the record.
        let mut second = first.clone();
        second.fields.title = Title::parse("second").unwrap();
        second.version += 1;
        let changed = encode_task(&second);
        assert_eq!(cache.decode(&key, first.id, &changed).unwrap(), second);
        // And back: equal bytes give the task they hold, never a newer one.
        assert_eq!(cache.decode(&key, first.id, &bytes).unwrap(), first);
    }

    #[test]
    fn unreadable_records_are_reported_every_time_and_not_kept() {
        let cache = DecodedTasks::new(DECODED_CACHE_BYTES);
        let owner = PrincipalName::parse("alice").unwrap();
        let t = task("t");
        let key = task_key(&owner, t.id);
        let mut bytes = encode_task(&t);
        let n = bytes.len();
        bytes.truncate(n - 3);
        for _ in 0..2 {
            assert!(cache.decode(&key, t.id, &bytes).is_err());
        }
        assert_eq!(cache.len(), 0);
        // A record that names another id is unreadable under this key,
        // even when the bytes were decoded under their own id before.
        let other = task("other");
        let other_bytes = encode_task(&other);
        cache
            .decode(&task_key(&owner, other.id), other.id, &other_bytes)
            .unwrap();
        assert!(cache.decode(&key, t.id, &other_bytes).is_err());
    }

    #[test]
    fn a_record_is_kept_on_its_second_decode() {
        let cache = DecodedTasks::new(DECODED_CACHE_BYTES);
        let owner = PrincipalName::parse("alice").unwrap();
        let tasks: Vec<Task> = (0..100).map(|i| task(&format!("t{i}"))).collect();
        let read_all = |n: usize| {
            for t in &tasks {
                let bytes = encode_task(t);
                assert_eq!(
                    &cache.decode(&task_key(&owner, t.id), t.id, &bytes).unwrap(),
                    t
                );
            }
            assert_eq!(cache.len(), n);
        };
        read_all(0);
        read_all(100);
        read_all(100);
    }

    #[test]
    fn the_doorkeeper_forgets_after_a_quarter_of_its_bits() {
        let seen = Doorkeeper::new();
        let first = task("first").id;
        assert!(!seen.seen_or_mark(first));
        assert!(seen.seen_or_mark(first));
        // A quarter of its bits in new ids clears it, ids it holds
        // (or seems to) do not count: well before half its bits, it has
        // forgotten the first. Real task ids, made together: the clearing
        // is counted by a hash of them, which their counter bits must not
        // fool.
        for _ in 0..Doorkeeper::BITS / 2 {
            seen.seen_or_mark(TaskId::new());
        }
        assert!(!seen.seen_or_mark(first), "cleared, so marked afresh");
    }

    #[test]
    fn the_cache_stays_within_its_weight() {
        let capacity = 64 << 10;
        let cache = DecodedTasks::new(capacity);
        let owner = PrincipalName::parse("alice").unwrap();
        let mut weight = 0;
        for i in 0..2_000 {
            let t = task(&format!("task {i}"));
            let bytes = encode_task(&t);
            weight = 2 * bytes.len() as u64 + 160;
            for _ in 0..2 {
                assert_eq!(
                    cache.decode(&task_key(&owner, t.id), t.id, &bytes).unwrap(),
                    t
                );
            }
        }
        assert!(cache.len() > 0);
        assert!(
            cache.len() as u64 * weight <= capacity,
            "{} entries",
            cache.len()
        );
    }
}
