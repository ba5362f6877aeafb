//! The storage contract on the embedded redb backend, plus redb-specific
//! behaviour: reopening, locking, sharing between handles, corrupt records.

mod contract;
mod roundtrip;

use std::sync::Arc;

use contract::Fixture;
use devops_api::storage::{DbSharing, ManualClock, RedbConfig, RedbStore, StorageError, Store};

fn fixture_with(configure: impl FnOnce(&mut RedbConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new();
    let mut cfg = RedbConfig::new(dir.path());
    cfg.clock = clock.clone();
    configure(&mut cfg);
    Fixture {
        store: Arc::new(RedbStore::open(&cfg).expect("open")),
        clock,
        _guard: Box::new(dir),
    }
}

async fn redb_fixture() -> Fixture {
    fixture_with(|_| {})
}

async fn redb_naive_fixture() -> Fixture {
    fixture_with(|cfg| cfg.group_commit = false)
}

async fn redb_multi_writer_fixture() -> Fixture {
    fixture_with(|cfg| cfg.sharing = DbSharing::MultiWriter)
}

store_contract_tests!(redb_fixture);

/// The same contract with group commit off (the benchmark's baseline) and in
/// multi-writer mode (the stack's setting).
mod naive {
    use super::*;
    store_contract_tests!(redb_naive_fixture);
}

mod multi_writer {
    use super::*;
    store_contract_tests!(redb_multi_writer_fixture);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let t = contract::create(&store, "alice", serde_json::json!({"title": "kept"})).await;
    store.close().await;
    drop(store);
    let store = RedbStore::open(&cfg).unwrap();
    assert_eq!(store.get_task("alice", t.id).await.unwrap(), t);
}

#[tokio::test]
async fn exclusive_file_is_locked_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let _held = RedbStore::open(&cfg).unwrap();
    let err = RedbStore::open(&cfg).err().expect("second open fails");
    let msg = err.to_string();
    assert!(
        msg.contains("locked by another process") && msg.contains("multi-writer"),
        "{msg}"
    );
}

#[tokio::test]
async fn unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = RedbStore::open(&RedbConfig::new(file.join("sub")))
        .err()
        .expect("fails");
    assert!(
        err.to_string().contains("cannot create data directory"),
        "{err}"
    );
}

#[tokio::test]
async fn closed_store_reports_unavailable() {
    let fx = redb_fixture().await;
    fx.store.close().await;
    assert!(matches!(
        fx.store.ping().await,
        Err(StorageError::Unavailable(_))
    ));
    let r = fx
        .store
        .create_task("alice", contract::new_task("late"))
        .await;
    assert!(matches!(r, Err(StorageError::Unavailable(_))), "{r:?}");
}

/// Every accepted body is kept unchanged through the store, HTTP and a
/// backup/restore round trip (see `tests/roundtrip`).
#[test]
fn accepted_values_round_trip_on_redb() {
    roundtrip::check_backend(48, || async {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        roundtrip::Stores {
            source: Arc::new(RedbStore::open(&RedbConfig::new(a.path())).unwrap()),
            target: Arc::new(RedbStore::open(&RedbConfig::new(b.path())).unwrap()),
            _guard: Box::new((a, b)),
        }
    });
}
