//! The storage contract on the embedded redb backend, plus redb-specific
//! behaviour: reopening, locking, sharing between handles, corrupt records.

mod contract;
mod roundtrip;

use std::sync::Arc;

use redb::ReadableTable;

use contract::{Fixture, p};
use devops_api::domain::Precondition;
use devops_api::storage::{
    DbSharing, IndexUpkeep, ManualClock, RedbConfig, RedbStore, StorageError, Store,
};

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
    assert_eq!(store.get_task(&p("alice"), t.id).await.unwrap(), t);
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
        Err(StorageError::Unavailable { .. })
    ));
    let r = fx
        .store
        .create_task(&p("alice"), contract::new_task("late"))
        .await;
    assert!(matches!(r, Err(StorageError::Unavailable { .. })), "{r:?}");
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

const TASKS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("tasks_v1");

/// The key layout of `tasks_v1`: `owner 0x00 id(16 bytes, big-endian)`.
fn raw_task_key(owner: &str, id: devops_api::domain::TaskId) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&id.as_u128().to_be_bytes());
    k
}

/// `store_corrupt_records_total` summed over kinds, from the process's recorder.
fn corrupt_count() -> f64 {
    roundtrip::metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("store_corrupt_records_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records that cannot be decoded (written as raw bytes into the table) do
/// not take down a list page, a backup or another principal: they are left
/// out, logged with their key and counted; only a request for one of them
/// fails. Among them the case: a due date that an offset moved past
/// year 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_isolated() {
    use devops_api::domain::TaskId;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let mut good = Vec::new();
    for i in 0..5 {
        good.push(
            contract::create(
                &store,
                "alice",
                serde_json::json!({"title": format!("t{i}")}),
            )
            .await,
        );
    }
    let bob = contract::create(&store, "bob", serde_json::json!({"title": "bob's"})).await;
    store.close().await;
    drop(store);

    // Three bad records among alice's tasks.
    let (garbage, far_future, wrong_id) = (TaskId::new(), TaskId::new(), TaskId::new());
    let json =
        String::from_utf8(devops_api::storage::codec::encode_task(&good[0])[1..].to_vec()).unwrap();
    let future = json.replacen(
        &format!("\"id\":\"{}\"", good[0].id),
        &format!("\"id\":\"{far_future}\",\"due_at\":\"+10000-01-01T23:58:59.000000Z\""),
        1,
    );
    {
        let db = redb::Database::create(cfg.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(TASKS).unwrap();
            t.insert(
                raw_task_key("alice", garbage).as_slice(),
                b"\x01{not json".as_slice(),
            )
            .unwrap();
            let mut v = vec![1u8];
            v.extend_from_slice(future.as_bytes());
            t.insert(raw_task_key("alice", far_future).as_slice(), v.as_slice())
                .unwrap();
            let mut v = vec![1u8];
            v.extend_from_slice(json.as_bytes());
            t.insert(raw_task_key("alice", wrong_id).as_slice(), v.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&cfg).unwrap());
    let before = corrupt_count();
    for limit in [1, 2, 100] {
        for order in [
            devops_api::domain::Order::Asc,
            devops_api::domain::Order::Desc,
        ] {
            let mut q = devops_api::domain::ListQuery {
                limit,
                order,
                ..Default::default()
            };
            let mut ids = Vec::new();
            loop {
                let page = store
                    .list_tasks(&p("alice"), &q)
                    .await
                    .expect("a list page");
                ids.extend(page.items.iter().map(|t| t.id));
                match page.next {
                    Some(n) => q.after = Some(n),
                    None => break,
                }
            }
            ids.sort();
            let mut want: Vec<_> = good.iter().map(|t| t.id).collect();
            want.sort();
            assert_eq!(
                ids, want,
                "limit {limit} {order:?}: the readable tasks, each once"
            );
        }
    }
    assert!(corrupt_count() > before, "unreadable records are counted");
    for id in [garbage, far_future, wrong_id] {
        assert!(matches!(
            store.get_task(&p("alice"), id).await,
            Err(StorageError::Corrupt { .. })
        ));
        let change = devops_api::domain::TaskChange::Replace(contract::fields(
            serde_json::json!({"title": "x"}),
        ));
        assert!(matches!(
            store
                .update_task(&p("alice"), id, change, Precondition::Any)
                .await,
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            store.delete_task(&p("alice"), id, Precondition::Any).await,
            Err(StorageError::Corrupt { .. })
        ));
    }
    assert_eq!(store.get_task(&p("bob"), bob.id).await.unwrap(), bob);
    assert_eq!(
        store.get_task(&p("alice"), good[1].id).await.unwrap(),
        good[1]
    );

    // A backup holds everything else and says what it left out.
    let file = dir.path().join("b.jsonl");
    let report = devops_api::backup::backup(store.as_ref(), &file, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.records, 6);
    let mut keys: Vec<_> = report.unreadable.iter().map(|u| u.key.clone()).collect();
    keys.sort();
    let mut want = vec![
        format!("tasks_v1/alice/{garbage}"),
        format!("tasks_v1/alice/{far_future}"),
        format!("tasks_v1/alice/{wrong_id}"),
    ];
    want.sort();
    assert_eq!(keys, want);
    let read = devops_api::backup::read(&file, &mut |_, _, _| {}).unwrap();
    assert_eq!(read.unreadable, 3, "the trailer counts what is missing");
    let other = tempfile::tempdir().unwrap();
    let target = RedbStore::open(&RedbConfig::new(other.path())).unwrap();
    assert_eq!(
        devops_api::backup::restore(&target, &file, &mut |_, _, _| {})
            .await
            .unwrap(),
        devops_api::backup::RestoreReport {
            records: 6,
            lacking: 3
        }
    );

    // Through HTTP: the list is served, only the bad task fails.
    let served = roundtrip::serve(store.clone()).await;
    let r = served
        .client
        .get(served.url("/v1/tasks"))
        .bearer_auth(&served.tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let r = served
        .client
        .get(served.url(&format!("/v1/tasks/{far_future}")))
        .bearer_auth(&served.tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    served.stop().await;
}

/// A disk in memory that fails every write, resize and flush with ENOSPC
/// while `full` is set, like a full file system; reads keep working.
#[derive(Debug, Clone, Default)]
struct FullableDisk {
    bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl FullableDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }

    fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }
}

impl redb::StorageBackend for FullableDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let b = self.bytes.lock().unwrap();
        let src = b
            .get(offset as usize..offset as usize + out.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        let mut b = self.bytes.lock().unwrap();
        let end = offset as usize + data.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ok().await {
        assert!(std::time::Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// After a fatal I/O error (redb then answers everything with "Previous I/O
/// error") the store is not ready at once, refuses writes with
/// `Unavailable`, reopens the database once the disk takes writes again, and
/// every acknowledged write is still there. A failed import leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_store_unready_until_it_reopens() {
    let disk = FullableDisk::default();
    let backend = disk.clone();
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open_with_backend(&RedbConfig::new("unused"), move || backend.clone()).unwrap(),
    );
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            contract::create(
                store.as_ref(),
                "alice",
                serde_json::json!({"title": format!("before {i}")}),
            )
            .await,
        );
    }
    store.ping().await.expect("ready");

    disk.set_full(true);
    let r = store
        .create_task(&p("alice"), contract::new_task("while full"))
        .await;
    assert!(matches!(r, Err(StorageError::Unavailable { .. })), "{r:?}");
    assert!(
        matches!(store.ping().await, Err(StorageError::Unavailable { .. })),
        "not ready as soon as the write failed"
    );
    // An import while the disk is full fails and leaves nothing behind.
    let set = devops_api::storage::ImportSet::validate(vec![]).unwrap();
    assert!(store.import(set).await.is_err());
    for _ in 0..5 {
        let r = store
            .create_task(&p("alice"), contract::new_task("still full"))
            .await;
        assert!(matches!(r, Err(StorageError::Unavailable { .. })), "{r:?}");
        assert!(store.ping().await.is_err());
    }

    disk.set_full(false);
    until("ready again", async || store.ping().await.is_ok()).await;
    let after = contract::create(
        store.as_ref(),
        "alice",
        serde_json::json!({"title": "after"}),
    )
    .await;
    acked.push(after);
    for t in &acked {
        assert_eq!(
            &store.get_task(&p("alice"), t.id).await.unwrap(),
            t,
            "acknowledged write kept"
        );
    }
    let page = store
        .list_tasks(
            &p("alice"),
            &devops_api::domain::ListQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.len(),
        acked.len(),
        "nothing unacknowledged appeared"
    );
    store.close().await;
}

/// The same through HTTP: `/ready` is 503 while the disk is full, writes are
/// 503 problems, and both recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_the_disk_is_full() {
    let disk = FullableDisk::default();
    let backend = disk.clone();
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open_with_backend(&RedbConfig::new("unused"), move || backend.clone()).unwrap(),
    );
    let served = roundtrip::serve(store.clone()).await;
    let c = &served.client;
    let create = |title: &str| {
        c.post(served.url("/v1/tasks"))
            .bearer_auth(&served.tokens[0])
            .json(&serde_json::json!({ "title": title }))
            .send()
    };
    assert_eq!(create("a").await.unwrap().status(), 201);
    assert_eq!(
        c.get(served.url("/ready")).send().await.unwrap().status(),
        200
    );
    disk.set_full(true);
    assert_eq!(create("b").await.unwrap().status(), 503);
    assert_eq!(
        c.get(served.url("/ready")).send().await.unwrap().status(),
        503
    );
    disk.set_full(false);
    until("/ready 200", async || {
        c.get(served.url("/ready")).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(create("c").await.unwrap().status(), 201);
    served.stop().await;
    store.close().await;
}

/// With unique idempotency keys, create+delete keeps adding records; the
/// sweep deletes them once their day is over, so the file stops growing.
/// (Without the sweep the file grows with every round: 0.3, 0.5, 1.0, 1.0,
/// 1.4 MB over five rounds of 200 pairs, measured.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_create_delete_does_not_grow_the_file_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut cfg = RedbConfig::new(dir.path());
    cfg.clock = clock.clone();
    let store = RedbStore::open(&cfg).unwrap();
    let mut sizes = Vec::new();
    for round in 0..8 {
        for i in 0..200 {
            let new = devops_api::storage::NewTask {
                fields: contract::fields(
                    serde_json::json!({"title": format!("t{i}"), "description": "x".repeat(200)}),
                ),
                idempotency: Some(devops_api::storage::Idempotency {
                    key: format!("round{round}-{i}"),
                    request_digest: [1; 32],
                }),
                max_tasks: 1_000,
            };
            let t = store.create_task(&p("alice"), new).await.unwrap();
            store
                .delete_task(&p("alice"), t.task().id, Precondition::Any)
                .await
                .unwrap();
        }
        clock.advance(devops_api::storage::IDEMPOTENCY_TTL + std::time::Duration::from_secs(1));
        assert_eq!(store.sweep_expired().await.unwrap(), 200, "round {round}");
        sizes.push(std::fs::metadata(cfg.db_path()).unwrap().len());
    }
    eprintln!("file sizes after each round: {sizes:?}");
    let settled = sizes[2];
    assert!(
        sizes[3..].iter().all(|&s| s <= settled),
        "the file keeps growing: {sizes:?}"
    );
    store.close().await;
}

/// The data directory is created 0700 and the database file 0600; an
/// existing file readable by others is narrowed to 0600.
#[cfg(unix)]
#[tokio::test]
async fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a").join("data");
    let cfg = RedbConfig::new(&data);
    let store = RedbStore::open(&cfg).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&cfg.db_path()), 0o600);
    store.close().await;
    drop(store);
    std::fs::set_permissions(cfg.db_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = RedbStore::open(&cfg).unwrap();
    assert_eq!(mode(&cfg.db_path()), 0o600);
    let file = dir.path().join("backup.jsonl");
    std::fs::write(&file, b"an older backup").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    devops_api::backup::backup(&store, &file, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(mode(&file), 0o600, "a replaced backup file is 0600 too");
    store.close().await;
}

/// A file written before the expiry index existed: its idempotency records
/// are indexed when it is opened, and expire like new ones.
#[tokio::test]
async fn idempotency_records_of_older_files_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut cfg = RedbConfig::new(dir.path());
    cfg.clock = clock.clone();
    let store = RedbStore::open(&cfg).unwrap();
    for k in ["a", "b"] {
        store
            .create_task(&p("alice"), contract::keyed_new_task("t", k))
            .await
            .unwrap();
    }
    store.close().await;
    drop(store);
    {
        // Back to the layout of older releases: no index table.
        let db = redb::Database::create(cfg.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        let index: redb::TableDefinition<&[u8], ()> =
            redb::TableDefinition::new("idempotency_expiry_v1");
        assert!(txn.delete_table(index).unwrap());
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&cfg).unwrap();
    assert_eq!(store.sweep_expired().await.unwrap(), 0);
    clock.advance(devops_api::storage::IDEMPOTENCY_TTL + std::time::Duration::from_secs(1));
    assert_eq!(store.sweep_expired().await.unwrap(), 2);
    store.close().await;
}

/// An idempotency record that cannot be decoded frees its key (reported and
/// counted): the create makes a new task and the key answers for it from
/// then on.
#[tokio::test]
async fn an_unreadable_idempotency_record_frees_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let first = store
        .create_task(&p("alice"), contract::keyed_new_task("a", "k"))
        .await
        .unwrap();
    store.close().await;
    drop(store);
    {
        let db = redb::Database::create(cfg.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&[u8], &[u8]> =
                redb::TableDefinition::new("idempotency_v1");
            let mut t = txn.open_table(table).unwrap();
            t.insert(b"alice\0k".as_slice(), b"\x01{not json".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&cfg).unwrap();
    let before = corrupt_count();
    let again = store
        .create_task(&p("alice"), contract::keyed_new_task("a", "k"))
        .await
        .unwrap();
    let devops_api::storage::Created::New(t) = again else {
        panic!("an unreadable record replayed: {again:?}")
    };
    assert_ne!(t.id, first.task().id);
    assert!(corrupt_count() > before, "the unreadable record is counted");
    assert_eq!(
        store
            .create_task(&p("alice"), contract::keyed_new_task("a", "k"))
            .await
            .unwrap(),
        devops_api::storage::Created::Replayed(t)
    );
    store.close().await;
}

/// A file written by the release before the filter index (a golden copy,
/// `tests/golden/redb_file_v1.redb`: tasks of two owners with every filter
/// field, updates, deletes, an idempotency record and a token) is indexed
/// when first opened: every filter lists what a scan of its records says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_the_filter_index_is_indexed_on_open() {
    use devops_api::domain::{ListQuery, Order, Priority, Status};
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/redb_file_v1.redb"
        ),
        dir.path().join(devops_api::storage::redb::DB_FILE),
    )
    .unwrap();
    let store = RedbStore::open(&RedbConfig::new(dir.path())).unwrap();
    let check = store.check_indexes().await.unwrap();
    assert!(check.is_consistent(), "{check:?}");
    for owner in ["alice", "bob"] {
        // Unfiltered pages read the records themselves.
        let all = store
            .list_tasks(
                &p(owner),
                &ListQuery {
                    limit: 100,
                    ..ListQuery::default()
                },
            )
            .await
            .unwrap()
            .items;
        assert!(all.len() > 5, "the golden file holds {owner}'s tasks");
        let mut queries = Vec::new();
        for tag in ["ops", "rare", "release", "db", "ui"] {
            queries.push(ListQuery {
                tag: Some(tag.into()),
                ..ListQuery::default()
            });
        }
        for status in Status::ALL {
            queries.push(ListQuery {
                status: Some(status),
                ..ListQuery::default()
            });
        }
        for priority in Priority::ALL {
            queries.push(ListQuery {
                priority: Some(priority),
                tag: Some("rare".into()),
                ..ListQuery::default()
            });
        }
        for day in ["2030-01-05", "2030-01-20", "2029-07-01"] {
            queries.push(ListQuery {
                due_before: Some(format!("{day}T00:00:00Z").parse().unwrap()),
                ..ListQuery::default()
            });
        }
        let mut some_match = false;
        for q in queries {
            for order in Order::ALL {
                let q = ListQuery {
                    limit: 100,
                    order,
                    ..q.clone()
                };
                let got = store.list_tasks(&p(owner), &q).await.unwrap().items;
                let mut want: Vec<_> = all.iter().filter(|t| q.matches(t)).cloned().collect();
                if order == Order::Desc {
                    want.reverse();
                }
                some_match |= !want.is_empty();
                assert_eq!(got, want, "{owner}: {q:?}");
            }
        }
        assert!(some_match);
    }
    store.close().await;
}

/// The index check finds an index that disagrees with its records: an
/// entry missing, and an entry for no task.
#[tokio::test]
async fn the_index_check_finds_disagreements() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let t = contract::create(
        &store,
        "alice",
        serde_json::json!({"title": "x", "tags": ["ops"], "status": "done"}),
    )
    .await;
    assert!(store.check_indexes().await.unwrap().is_consistent());
    store.close().await;
    drop(store);
    {
        let db = redb::Database::open(cfg.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("task_index_v1");
            let mut index = txn.open_table(def).unwrap();
            let mut tag_key = b"alice\0tops\0".to_vec();
            tag_key.extend_from_slice(&t.id.as_u128().to_be_bytes());
            assert!(index.remove(tag_key.as_slice()).unwrap().is_some());
            let mut stray = b"alice\0trare\0".to_vec();
            stray.extend_from_slice(&devops_api::domain::TaskId::new().as_u128().to_be_bytes());
            index.insert(stray.as_slice(), ()).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut cfg = cfg;
    cfg.index_upkeep = IndexUpkeep::Off;
    let store = RedbStore::open(&cfg).unwrap();
    let check = store.check_indexes().await.unwrap();
    assert_eq!(check.disagreements, 2, "{check:?}");
    // A repair fixes both, and only them.
    let done = store.repair_indexes().await.unwrap();
    assert_eq!((done.added, done.removed), (1, 1));
    assert!(store.check_indexes().await.unwrap().is_consistent());
    store.close().await;
}

/// A process of the release before the filter index, sharing the file in
/// multi-writer mode (a rolling update, or a rollback and a new deploy):
/// it writes tasks as that release did, records and counts without index
/// entries. The same operations as `src/storage/redb/ops.rs` of that
/// release, on the tables it knew.
struct OldRelease {
    db: redb::Database,
}

const COUNTS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("task_counts_v1");

impl OldRelease {
    fn open(path: &std::path::Path) -> Self {
        let mut b = redb::Builder::new();
        b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        Self {
            db: b
                .create(path)
                .expect("the old release opens the shared file"),
        }
    }

    fn put(&self, owner: &str, task: &devops_api::domain::Task, count_change: i64) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut tasks = txn.open_table(TASKS).unwrap();
            tasks
                .insert(
                    raw_task_key(owner, task.id).as_slice(),
                    devops_api::storage::codec::encode_task(task).as_slice(),
                )
                .unwrap();
            let mut counts = txn.open_table(COUNTS).unwrap();
            let n = counts.get(owner).unwrap().map_or(0, |v| v.value());
            counts
                .insert(owner, n.checked_add_signed(count_change).unwrap())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    fn create(&self, owner: &str, body: serde_json::Value) -> devops_api::domain::Task {
        let task =
            devops_api::domain::Task::create(devops_api::domain::parse_create(&body).unwrap());
        self.put(owner, &task, 1);
        task
    }

    fn replace(
        &self,
        owner: &str,
        task: &devops_api::domain::Task,
        body: serde_json::Value,
    ) -> devops_api::domain::Task {
        let fields = devops_api::domain::parse_create(&body).unwrap();
        let updated = task.with_fields(fields, devops_api::domain::now());
        self.put(owner, &updated, 0);
        updated
    }

    fn delete(&self, owner: &str, task: &devops_api::domain::Task) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut tasks = txn.open_table(TASKS).unwrap();
            assert!(
                tasks
                    .remove(raw_task_key(owner, task.id).as_slice())
                    .unwrap()
                    .is_some()
            );
            let mut counts = txn.open_table(COUNTS).unwrap();
            let n = counts.get(owner).unwrap().map_or(0, |v| v.value());
            counts.insert(owner, n - 1).unwrap();
        }
        txn.commit().unwrap();
    }
}

/// Every filter's first page (limit 100, both orders) against the model:
/// the unfiltered listing filtered in memory. Returns the queries that
/// disagree.
async fn filters_disagreeing(store: &dyn Store, owner: &str) -> Vec<String> {
    use devops_api::domain::{ListQuery, Order, Priority, Status};
    let all = store
        .list_tasks(
            &p(owner),
            &ListQuery {
                limit: 100,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap()
        .items;
    let mut queries = Vec::new();
    for tag in ["ops", "fresh", "moved", "gone"] {
        queries.push(ListQuery {
            tag: Some(tag.into()),
            ..ListQuery::default()
        });
    }
    for status in Status::ALL {
        queries.push(ListQuery {
            status: Some(status),
            ..ListQuery::default()
        });
    }
    for priority in Priority::ALL {
        queries.push(ListQuery {
            priority: Some(priority),
            ..ListQuery::default()
        });
    }
    queries.push(ListQuery {
        due_before: Some("2031-01-01T00:00:00Z".parse().unwrap()),
        ..ListQuery::default()
    });
    let mut wrong = Vec::new();
    for q in queries {
        for order in Order::ALL {
            let q = ListQuery {
                limit: 100,
                order,
                ..q.clone()
            };
            let got = store.list_tasks(&p(owner), &q).await.unwrap().items;
            let mut want: Vec<_> = all.iter().filter(|t| q.matches(t)).cloned().collect();
            if order == Order::Desc {
                want.reverse();
            }
            // Whatever the index says, a page never holds a task that does
            // not match (every candidate is checked against the filter).
            assert!(got.iter().all(|t| q.matches(t)), "{q:?}: {got:?}");
            if got != want {
                wrong.push(format!("{q:?}: got {} want {}", got.len(), want.len()));
            }
        }
    }
    wrong
}

/// The old release's writes through a shared file while this release runs:
/// creates, changes of status, priority, tags and due date, and deletes. Its
/// tasks are missing from filtered lists until the index is repaired (the
/// failure a rolling update causes), `check_indexes` reports exactly the
/// entries involved, and one repair makes every filter list what the
/// records say, with the counts of what it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_written_by_the_release_before_the_index_are_listed_after_a_repair() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RedbConfig::new(dir.path());
    cfg.sharing = DbSharing::MultiWriter;
    cfg.index_upkeep = IndexUpkeep::Off;
    let store = RedbStore::open(&cfg).unwrap();
    let kept = contract::create(&store, "alice", json!({"title": "kept", "tags": ["ops"]})).await;
    let moved = contract::create(
        &store,
        "alice",
        json!({"title": "moved", "tags": ["ops"], "status": "todo", "priority": "low"}),
    )
    .await;
    let gone = contract::create(
        &store,
        "alice",
        json!({"title": "gone", "tags": ["gone"], "due_at": "2030-06-01T00:00:00Z"}),
    )
    .await;
    assert!(filters_disagreeing(&store, "alice").await.is_empty());

    let old = OldRelease::open(&cfg.db_path());
    // 3 + 3 + 3 entries (status, priority, tags, due) this release would write.
    old.create(
        "alice",
        json!({"title": "fresh 1", "tags": ["fresh"], "status": "done"}),
    );
    old.create(
        "alice",
        json!({"title": "fresh 2", "tags": ["fresh", "ops"], "priority": "high"}),
    );
    old.create(
        "alice",
        json!({"title": "fresh 3", "due_at": "2030-01-01T00:00:00Z", "tags": []}),
    );
    // ops -> moved, todo -> done, low -> high: 3 entries missing, 3 stray.
    old.replace(
        "alice",
        &moved,
        json!({"title": "moved", "tags": ["moved"], "status": "done", "priority": "high"}),
    );
    // 4 stray entries (status, priority, tag, due).
    old.delete("alice", &gone);
    drop(old);

    let wrong = filters_disagreeing(&store, "alice").await;
    assert!(
        !wrong.is_empty(),
        "the index went stale, so lists miss tasks"
    );
    let check = store.check_indexes().await.unwrap();
    let (missing, stray) = (3 + 4 + 3 + 3, 3 + 4);
    assert_eq!(check.disagreements, missing + stray, "{check:?}");

    let done = store.repair_indexes().await.unwrap();
    assert_eq!((done.added, done.removed), (missing, stray));
    assert!(store.check_indexes().await.unwrap().is_consistent());
    assert_eq!(
        filters_disagreeing(&store, "alice").await,
        Vec::<String>::new()
    );
    // A second repair finds nothing; the tasks this release wrote were never touched.
    assert_eq!(store.repair_indexes().await.unwrap(), Default::default());
    assert_eq!(store.get_task(&p("alice"), kept.id).await.unwrap(), kept);
    store.close().await;
}

/// Without anyone asking: a store on a shared file verifies its index
/// periodically (`IndexUpkeep::Every`, in production every
/// `INDEX_VERIFY_INTERVAL` under multi-writer), so tasks an old release
/// writes while it runs show up in filtered lists; and a file that an old
/// release wrote alone (after a rollback) is repaired once opened, in both
/// sharing modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_repaired_periodically_and_after_opening() {
    use devops_api::domain::ListQuery;
    use serde_json::json;
    let fresh = ListQuery {
        tag: Some("fresh".into()),
        ..ListQuery::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RedbConfig::new(dir.path());
    cfg.sharing = DbSharing::MultiWriter;
    cfg.index_upkeep = IndexUpkeep::Every(std::time::Duration::from_millis(50));
    let store = RedbStore::open(&cfg).unwrap();
    let old = OldRelease::open(&cfg.db_path());
    // Past the repair after opening: only a periodic one can find this task.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = old.create(
        "alice",
        json!({"title": "while running", "tags": ["fresh"]}),
    );
    until(
        "the periodic repair lists the old release's task",
        async || store.list_tasks(&p("alice"), &fresh).await.unwrap().items == vec![t.clone()],
    )
    .await;
    store.close().await;
    drop(store);
    drop(old);

    // The old release alone (Swarm rolled back), then this one again: the
    // repair after opening (`IndexUpkeep::Auto`) lists what it wrote.
    let mut want = vec![t];
    for sharing in [DbSharing::Exclusive, DbSharing::MultiWriter] {
        let old = OldRelease::open(&cfg.db_path());
        want.push(old.create(
            "alice",
            json!({"title": "after a rollback", "tags": ["fresh"]}),
        ));
        drop(old);
        let mut cfg = RedbConfig::new(dir.path());
        cfg.sharing = sharing;
        let store = RedbStore::open(&cfg).unwrap();
        until("the repair after opening lists them", async || {
            let mut items = store.list_tasks(&p("alice"), &fresh).await.unwrap().items;
            items.sort_by_key(|t| t.id.as_u128());
            items == want
        })
        .await;
        assert!(store.check_indexes().await.unwrap().is_consistent());
        store.close().await;
    }
}
