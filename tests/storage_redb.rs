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

/// A store's configuration in `dir` on a clock the test moves.
fn clocked(dir: &std::path::Path) -> (Arc<ManualClock>, RedbConfig) {
    let clock = ManualClock::new();
    let cfg = RedbConfig {
        clock: clock.clone(),
        ..RedbConfig::new(dir)
    };
    (clock, cfg)
}

fn fixture_with(configure: impl FnOnce(&mut RedbConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let (clock, mut cfg) = clocked(dir.path());
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
token_contract_tests!(redb_fixture);

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
    let (clock, cfg) = clocked(dir.path());
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
    let (clock, cfg) = clocked(dir.path());
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

/// What the release before named tokens does with the token tables, as its
/// code did it (`storage::redb::ops` of that release), on a file this
/// release also opens: the two share the file during a rolling update and
/// after a rollback.
mod previous_release {
    use devops_api::storage::codec::{TokenRecordV1, decode, encode};
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    use std::borrow::Cow;

    pub const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v1");
    pub const TOKEN_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("token_names_v1");

    /// Its authentication: the principal of the token with this digest.
    pub fn principal(db: &Database, digest: &[u8; 32]) -> Option<String> {
        let txn = db.begin_read().unwrap();
        let tokens = txn.open_table(TOKENS).unwrap();
        let v = tokens.get(digest.as_slice()).unwrap()?;
        let rec: TokenRecordV1 = decode("token", "k", v.value()).expect("a version-1 record");
        Some(rec.name.into_owned())
    }

    /// Its `token create`: refused while the principal has a token.
    pub fn create(db: &Database, principal: &str, digest: [u8; 32]) -> Result<(), ()> {
        let txn = db.begin_write().unwrap();
        {
            let mut names = txn.open_table(TOKEN_NAMES).unwrap();
            if names.get(principal).unwrap().is_some() {
                return Err(());
            }
            let rec = TokenRecordV1 {
                name: Cow::Borrowed(principal),
                created_at: chrono::Utc::now(),
            };
            let mut tokens = txn.open_table(TOKENS).unwrap();
            tokens
                .insert(digest.as_slice(), encode(&rec).as_slice())
                .unwrap();
            names.insert(principal, digest.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        Ok(())
    }

    /// Its `token revoke`: the principal's listed token; `None` if none.
    pub fn revoke(db: &Database, principal: &str) -> Option<[u8; 32]> {
        let txn = db.begin_write().unwrap();
        let digest = {
            let mut names = txn.open_table(TOKEN_NAMES).unwrap();
            let digest: [u8; 32] = names.get(principal).unwrap()?.value().try_into().unwrap();
            let mut tokens = txn.open_table(TOKENS).unwrap();
            tokens.remove(digest.as_slice()).unwrap();
            names.remove(principal).unwrap();
            digest
        };
        txn.commit().unwrap();
        Some(digest)
    }

    /// Every `(digest, record)` of a table.
    pub fn entries<K: redb::Key + 'static>(
        db: &Database,
        table: TableDefinition<K, &[u8]>,
    ) -> Vec<(Vec<u8>, Vec<u8>)>
    where
        for<'a> K::SelfType<'a>: AsRef<[u8]>,
    {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(table).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().as_ref().to_vec(), v.value().to_vec())
            })
            .collect()
    }
}

/// A redb file of this release in `dir`, used the way the other release
/// uses it in between: the store is closed, `f` runs on the file, and the
/// store opens again.
async fn as_previous_release<T>(
    store: RedbStore,
    cfg: &RedbConfig,
    f: impl FnOnce(&redb::Database) -> T,
) -> (RedbStore, T) {
    store.close().await;
    drop(store);
    let db = redb::Database::open(cfg.db_path()).unwrap();
    let out = f(&db);
    drop(db);
    (RedbStore::open(cfg).unwrap(), out)
}

const CI_BOT: &str = "dapi_9X8h0OjGS09AMEov8I9qXu92EVvQo63F-H5d-tG9sAg";

fn golden_layout_v1(dir: &std::path::Path) -> RedbConfig {
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/redb_layout_v1.redb"
        ),
        dir.join(devops_api::storage::redb::DB_FILE),
    )
    .unwrap();
    RedbConfig::new(dir)
}

/// A file written by the release before named tokens (one token per
/// principal), made by that release's binary with `restore
/// tests/golden/backup_v1.jsonl` and `token create ci-bot`, opens: its
/// tokens are the principals' tokens named `default` and still
/// authenticate, and the tables that release reads are still there, holding
/// every record they held, plus the tokens made since, in its format.
#[tokio::test]
async fn a_file_from_before_named_tokens_keeps_the_previous_layout() {
    use devops_api::domain::TokenName;
    use devops_api::storage::NewToken;
    use previous_release::{TOKEN_NAMES, TOKENS, entries};
    let dir = tempfile::tempdir().unwrap();
    let cfg = golden_layout_v1(dir.path());
    let before = redb::Database::open(cfg.db_path()).unwrap();
    let (tokens_before, names_before) = (entries(&before, TOKENS), entries(&before, TOKEN_NAMES));
    drop(before);
    assert_eq!((tokens_before.len(), names_before.len()), (2, 2));

    let store = RedbStore::open(&cfg).unwrap();
    let listed: Vec<_> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.principal.to_string(), t.name.to_string(), t.expires_at))
        .collect();
    assert_eq!(
        listed,
        [
            ("alice".into(), "default".into(), None),
            ("ci-bot".into(), "default".into(), None)
        ]
    );
    let ci = devops_api::auth::digest(CI_BOT);
    assert_eq!(
        store.principal(&ci).await.unwrap().as_deref(),
        Some("ci-bot")
    );
    assert_eq!(store.count_tasks().await.unwrap(), 1);
    assert!(matches!(
        store
            .create_token(NewToken::default_for(p("ci-bot"), [1; 32]))
            .await,
        Err(StorageError::AlreadyExists(_))
    ));
    store
        .create_token(NewToken {
            name: TokenName::parse("second").unwrap(),
            ..NewToken::default_for(p("ci-bot"), [1; 32])
        })
        .await
        .unwrap();
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        let tokens = entries(db, TOKENS);
        for e in &tokens_before {
            assert!(tokens.contains(e), "a record of the previous release went");
        }
        assert_eq!(tokens.len(), 3);
        assert_eq!(
            entries(db, TOKEN_NAMES),
            names_before,
            "each principal still names its `default` token"
        );
        assert_eq!(
            previous_release::principal(db, &[1; 32]).as_deref(),
            Some("ci-bot"),
            "a named token authenticates in the previous release too"
        );
        assert_eq!(
            previous_release::principal(db, &ci).as_deref(),
            Some("ci-bot")
        );
    })
    .await;
    assert_eq!(store.list_tokens().await.unwrap().len(), 3);
    store.close().await;
}

/// Writes of the previous release on a file of this release are honoured:
/// a token it creates authenticates here (as `default`, or `default-…` when
/// that name is taken); one it revokes is refused here; its `create` is
/// refused for a principal with tokens, and its `revoke` deletes one real
/// token at a time.
#[tokio::test]
async fn tokens_the_previous_release_creates_or_revokes_count_here() {
    use devops_api::domain::TokenName;
    use devops_api::storage::NewToken;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedbConfig::new(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let named = |p_: &str, n: &str, d: u8| NewToken {
        name: TokenName::parse(n).unwrap(),
        ..NewToken::default_for(p(p_), [d; 32])
    };
    store
        .create_token(named("alice", "laptop", 1))
        .await
        .unwrap();
    store.create_token(named("alice", "ci", 2)).await.unwrap();
    store
        .create_token(named("bob", "default", 3))
        .await
        .unwrap();

    // The previous release: alice has tokens (refused), carol is new, bob
    // loses his token, then makes another one.
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        assert!(previous_release::create(db, "alice", [9; 32]).is_err());
        previous_release::create(db, "carol", [4; 32]).unwrap();
        assert_eq!(previous_release::revoke(db, "bob"), Some([3; 32]));
        previous_release::create(db, "bob", [5; 32]).unwrap();
        // alice's listed token is her oldest current one: revoked there.
        assert_eq!(previous_release::revoke(db, "alice"), Some([1; 32]));
    })
    .await;
    let who = |d: u8| {
        let store = &store;
        async move { store.principal(&[d; 32]).await.unwrap() }
    };
    assert_eq!(who(4).await.as_deref(), Some("carol"), "created there");
    assert_eq!(who(5).await.as_deref(), Some("bob"), "created there");
    assert_eq!(who(3).await, None, "revoked there");
    assert_eq!(who(1).await, None, "revoked there");
    assert_eq!(who(2).await.as_deref(), Some("alice"));
    let listed = |tokens: Vec<devops_api::storage::TokenInfo>| {
        tokens
            .into_iter()
            .map(|t| (t.principal.to_string(), t.name.to_string(), t.digest[0]))
            .collect::<Vec<_>>()
    };
    let own = |v: &[(&str, &str, u8)]| {
        v.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(store.list_tokens().await.unwrap()),
        own(&[
            ("alice", "ci", 2),
            ("bob", "default", 5),
            ("carol", "default", 4)
        ])
    );
    // A second token of the previous release for a principal that already
    // has `default` (its listing entry went with a revoke) gets a name of
    // its own, kept once this release wrote its metadata.
    store
        .create_token(named("carol", "laptop", 6))
        .await
        .unwrap();
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        // carol's listed token is `default` (4).
        assert_eq!(previous_release::revoke(db, "carol"), Some([4; 32]));
        // Until this release writes tokens again (any token write, or the
        // sweep), carol is not listed there: it may create one.
        assert_eq!(previous_release::revoke(db, "carol"), None);
        previous_release::create(db, "carol", [7; 32]).unwrap();
    })
    .await;
    assert_eq!(
        store.principal(&[6; 32]).await.unwrap().as_deref(),
        Some("carol")
    );
    assert_eq!(
        store.principal(&[7; 32]).await.unwrap().as_deref(),
        Some("carol")
    );
    let carol = |tokens: Vec<devops_api::storage::TokenInfo>| {
        listed(tokens)
            .into_iter()
            .filter(|t| t.0 == "carol")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        carol(store.list_tokens().await.unwrap()),
        own(&[("carol", "default", 7), ("carol", "laptop", 6)])
    );
    // `default` taken by a token in its rotation's grace: the next token of
    // the previous release gets `default-<digest prefix>`, and keeps it.
    store
        .rotate_token(
            named("carol", "default", 9),
            std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        assert_eq!(
            previous_release::revoke(db, "carol"),
            Some([9; 32]),
            "the current `default`"
        );
        previous_release::create(db, "carol", [8; 32]).unwrap();
    })
    .await;
    assert_eq!(store.principal(&[9; 32]).await.unwrap(), None);
    assert_eq!(
        store.principal(&[8; 32]).await.unwrap().as_deref(),
        Some("carol")
    );
    assert_eq!(
        store.principal(&[7; 32]).await.unwrap().as_deref(),
        Some("carol"),
        "grace"
    );
    let eight = own(&[("carol", "default-08080808", 8)]);
    assert_eq!(
        carol(store.list_tokens().await.unwrap()),
        own(&[
            ("carol", "default", 7),
            ("carol", "default-08080808", 8),
            ("carol", "laptop", 6)
        ])
    );
    store.sweep_tokens().await.unwrap();
    store
        .create_token(named("carol", "default", 10))
        .await
        .unwrap();
    assert!(
        carol(store.list_tokens().await.unwrap()).contains(&eight[0]),
        "the name stays once stored"
    );
    store.close().await;
}

/// Expiry and a rotation's grace, which the previous release does not
/// know: the sweep takes the token out of the table that release reads, so
/// it refuses the token too (also after a rollback, once the server
/// stopped); this release still lists it as expired until it is revoked.
#[tokio::test]
async fn expired_and_rotated_out_tokens_leave_the_previous_releases_table() {
    use devops_api::domain::TokenName;
    use devops_api::storage::{Clock, NewToken};
    let dir = tempfile::tempdir().unwrap();
    let (clock, cfg) = clocked(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    store
        .create_token(NewToken {
            name: TokenName::parse("short").unwrap(),
            expires_at: Some(clock.now() + chrono::Duration::hours(1)),
            ..NewToken::default_for(p("alice"), [1; 32])
        })
        .await
        .unwrap();
    store
        .create_token(NewToken::default_for(p("bob"), [2; 32]))
        .await
        .unwrap();
    store
        .rotate_token(NewToken::default_for(p("bob"), [3; 32]), hour * 2)
        .await
        .unwrap();
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        for (d, who) in [(1, "alice"), (2, "bob"), (3, "bob")] {
            assert_eq!(
                previous_release::principal(db, &[d; 32]).as_deref(),
                Some(who)
            );
        }
    })
    .await;
    clock.advance(hour);
    assert_eq!(store.principal(&[1; 32]).await.unwrap(), None);
    assert_eq!(store.sweep_tokens().await.unwrap(), 1);
    clock.advance(hour);
    assert_eq!(store.principal(&[2; 32]).await.unwrap(), None, "grace over");
    // No sweep now: closing sweeps, so the previous release after a
    // rollback refuses it as well.
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        assert_eq!(previous_release::principal(db, &[1; 32]), None);
        assert_eq!(previous_release::principal(db, &[2; 32]), None);
        assert_eq!(
            previous_release::principal(db, &[3; 32]).as_deref(),
            Some("bob")
        );
        // bob's listed token is the current one.
        let names = previous_release::entries(db, previous_release::TOKEN_NAMES);
        assert_eq!(names, vec![(b"bob".to_vec(), vec![3; 32])]);
    })
    .await;
    let states: Vec<_> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.principal.to_string(), t.digest[0], t.expires_at.is_some()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        states,
        [
            ("alice".to_string(), 1, true),
            ("bob".to_string(), 2, true),
            ("bob".to_string(), 3, false)
        ],
        "expired tokens stay listed"
    );
    assert!(
        store.token(&[1; 32]).await.unwrap().is_some(),
        "still stored, as expired"
    );
    assert_eq!(
        store
            .revoke_token(&p("alice"), &TokenName::parse("short").unwrap())
            .await
            .unwrap(),
        1
    );
    assert!(store.token(&[1; 32]).await.unwrap().is_none());
    store.close().await;
}

/// A token the previous release revoked stays revoked when its expiry or
/// its rotation's grace ends before this release writes tokens again: it is
/// neither listed (as expired) nor holding its name, unlike a token that
/// expired and was swept (the test above).
#[tokio::test]
async fn tokens_the_previous_release_revoked_stay_revoked_once_their_time_is_up() {
    use devops_api::domain::TokenName;
    use devops_api::storage::{Clock, NewToken};
    let dir = tempfile::tempdir().unwrap();
    let (clock, cfg) = clocked(dir.path());
    let store = RedbStore::open(&cfg).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let named = |p_: &str, n: &str, d: u8| NewToken {
        name: TokenName::parse(n).unwrap(),
        ..NewToken::default_for(p(p_), [d; 32])
    };
    store
        .create_token(NewToken {
            expires_at: Some(clock.now() + chrono::Duration::hours(1)),
            ..named("alice", "laptop", 1)
        })
        .await
        .unwrap();
    store.create_token(named("bob", "ci", 2)).await.unwrap();
    store
        .rotate_token(named("bob", "ci", 3), hour)
        .await
        .unwrap();
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        assert_eq!(previous_release::revoke(db, "alice"), Some([1; 32]));
        assert_eq!(previous_release::revoke(db, "bob"), Some([3; 32]));
    })
    .await;
    // Closing synced `token_names_v1`: bob's token in its grace is listed.
    let (store, ()) = as_previous_release(store, &cfg, |db| {
        assert_eq!(previous_release::revoke(db, "bob"), Some([2; 32]));
    })
    .await;
    clock.advance(hour * 2);
    for d in 1..=3 {
        assert_eq!(store.principal(&[d; 32]).await.unwrap(), None);
        assert_eq!(store.token(&[d; 32]).await.unwrap(), None, "token {d}");
    }
    assert_eq!(store.list_tokens().await.unwrap(), vec![]);
    store
        .create_token(named("alice", "laptop", 4))
        .await
        .unwrap();
    store.create_token(named("bob", "ci", 5)).await.unwrap();
    store.sweep_tokens().await.unwrap();
    let digests: Vec<u8> = store
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .map(|t| t.digest[0])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(digests, [4, 5]);
    store.close().await;
}

/// The model of the token operations of both releases on one file.
mod token_model {
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub enum Op {
        /// This release: principal, name (never `default`), expiry in minutes.
        Create(u8, u8, Option<u16>),
        /// This release: principal, name, grace in minutes.
        Rotate(u8, u8, u16),
        Revoke(u8, u8),
        /// The previous release (the store closed meanwhile).
        OldCreate(u8),
        OldRevoke(u8),
        Advance(u16),
        Sweep,
    }

    pub fn op() -> impl Strategy<Value = Op> {
        let p = 0u8..3;
        let n = 0u8..2;
        prop_oneof![
            3 => (p.clone(), n.clone(), proptest::option::of(1u16..180)).prop_map(|(p, n, e)| Op::Create(p, n, e)),
            2 => (p.clone(), n.clone(), 0u16..120).prop_map(|(p, n, g)| Op::Rotate(p, n, g)),
            1 => (p.clone(), n).prop_map(|(p, n)| Op::Revoke(p, n)),
            2 => p.clone().prop_map(Op::OldCreate),
            2 => p.prop_map(Op::OldRevoke),
            2 => (1u16..120).prop_map(Op::Advance),
            1 => Just(Op::Sweep),
        ]
    }
}

/// Any interleaving of both releases' token operations on one file: this
/// release admits exactly the tokens that are neither revoked (by either
/// release) nor past their expiry or rotation grace, the previous release
/// admits the same set once this release closed the file (it swept), and
/// `token_names_v1` only names valid tokens of their principal.
#[test]
fn both_releases_agree_on_which_tokens_are_valid() {
    use devops_api::domain::TokenName;
    use devops_api::storage::{Clock, NewToken};
    use proptest::prelude::*;
    use std::collections::HashMap;
    use token_model::Op;

    #[derive(Debug)]
    struct Model {
        principal: String,
        name: Option<u8>,
        expires: Option<chrono::DateTime<chrono::Utc>>,
        replaced: bool,
        revoked: bool,
    }
    impl Model {
        fn valid(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
            !self.revoked && self.expires.is_none_or(|e| now < e)
        }
    }

    // PROPTEST_CASES widens the search (a minimal failing case is printed).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let ops = proptest::collection::vec(token_model::op(), 1..24);
    runner
        .run(&ops, |ops| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let (clock, cfg) = clocked(dir.path());
                let mut store = RedbStore::open(&cfg).unwrap();
                let mut model: HashMap<[u8; 32], Model> = HashMap::new();
                let mut next = 0u8;
                let principal = |i: u8| ["alice", "bob", "carol"][i as usize].to_string();
                let name = |i: u8| TokenName::parse(["ci", "laptop"][i as usize]).unwrap();
                let mut fresh = || {
                    next += 1;
                    [next; 32]
                };
                for op in ops {
                    let now = clock.now();
                    match op {
                        Op::Create(p_, n, exp) => {
                            let d = fresh();
                            let expires =
                                exp.map(|m| now + chrono::Duration::minutes(i64::from(m)));
                            let taken = model.values().any(|m| {
                                m.principal == principal(p_)
                                    && m.name == Some(n)
                                    && !m.replaced
                                    && !m.revoked
                            });
                            let r = store
                                .create_token(NewToken {
                                    name: name(n),
                                    expires_at: expires,
                                    ..NewToken::default_for(p(&principal(p_)), d)
                                })
                                .await;
                            assert_eq!(r.is_err(), taken, "create {r:?}");
                            if r.is_ok() {
                                model.insert(
                                    d,
                                    Model {
                                        principal: principal(p_),
                                        name: Some(n),
                                        expires,
                                        replaced: false,
                                        revoked: false,
                                    },
                                );
                            }
                        }
                        Op::Rotate(p_, n, grace) => {
                            let d = fresh();
                            let grace = std::time::Duration::from_secs(60 * u64::from(grace));
                            let r = store
                                .rotate_token(
                                    NewToken {
                                        name: name(n),
                                        ..NewToken::default_for(p(&principal(p_)), d)
                                    },
                                    grace,
                                )
                                .await;
                            let current = model.values_mut().find(|m| {
                                m.principal == principal(p_)
                                    && m.name == Some(n)
                                    && !m.replaced
                                    && !m.revoked
                            });
                            assert_eq!(r.is_ok(), current.is_some(), "rotate {r:?}");
                            if let Some(m) = current {
                                let end = devops_api::storage::retire(m.expires, now, grace);
                                m.expires = Some(end);
                                m.replaced = true;
                                model.insert(
                                    d,
                                    Model {
                                        principal: principal(p_),
                                        name: Some(n),
                                        expires: None,
                                        replaced: false,
                                        revoked: false,
                                    },
                                );
                            }
                        }
                        Op::Revoke(p_, n) => {
                            let r = store.revoke_token(&p(&principal(p_)), &name(n)).await;
                            let mut count = 0;
                            for m in model.values_mut() {
                                if m.principal == principal(p_) && m.name == Some(n) && !m.revoked {
                                    m.revoked = true;
                                    count += 1;
                                }
                            }
                            if count == 0 {
                                assert!(r.is_err(), "revoke {r:?}");
                            } else {
                                assert_eq!(r.unwrap(), count);
                            }
                        }
                        Op::OldCreate(p_) => {
                            let d = fresh();
                            let (s, r) = as_previous_release(store, &cfg, |db| {
                                previous_release::create(db, &principal(p_), d)
                            })
                            .await;
                            store = s;
                            if r.is_ok() {
                                model.insert(
                                    d,
                                    Model {
                                        principal: principal(p_),
                                        name: None,
                                        expires: None,
                                        replaced: false,
                                        revoked: false,
                                    },
                                );
                            } else {
                                assert!(
                                    model
                                        .values()
                                        .any(|m| m.principal == principal(p_) && m.valid(now)),
                                    "the previous release refused a principal without tokens"
                                );
                            }
                        }
                        Op::OldRevoke(p_) => {
                            let (s, r) = as_previous_release(store, &cfg, |db| {
                                previous_release::revoke(db, &principal(p_))
                            })
                            .await;
                            store = s;
                            if let Some(d) = r {
                                let m = model.get_mut(&d).expect("a real token");
                                assert_eq!(m.principal, principal(p_));
                                assert!(m.valid(now), "it revoked a valid token");
                                m.revoked = true;
                            }
                        }
                        Op::Advance(m) => {
                            clock.advance(std::time::Duration::from_secs(60 * u64::from(m)))
                        }
                        Op::Sweep => {
                            store.sweep_tokens().await.unwrap();
                        }
                    }
                    let now = clock.now();
                    for (d, m) in &model {
                        let who = store.principal(d).await.unwrap();
                        let want = m.valid(now).then(|| m.principal.clone());
                        assert_eq!(who.as_deref(), want.as_deref(), "this release, {d:?} {m:?}");
                        let listed = store.token(d).await.unwrap().is_some();
                        assert_eq!(listed, !m.revoked, "listed until revoked, {d:?} {m:?}");
                    }
                    let mut listed: Vec<[u8; 32]> = store
                        .list_tokens()
                        .await
                        .unwrap()
                        .iter()
                        .map(|t| t.digest)
                        .collect();
                    listed.sort();
                    let mut want: Vec<[u8; 32]> = model
                        .iter()
                        .filter(|(_, m)| !m.revoked)
                        .map(|(d, _)| *d)
                        .collect();
                    want.sort();
                    assert_eq!(listed, want, "token list");
                }
                let now = clock.now();
                let (s, ()) = as_previous_release(store, &cfg, |db| {
                    for (d, m) in &model {
                        let want = m.valid(now).then(|| m.principal.clone());
                        assert_eq!(
                            previous_release::principal(db, d),
                            want,
                            "previous release, {m:?}"
                        );
                    }
                    for (p_, d) in previous_release::entries(db, previous_release::TOKEN_NAMES) {
                        let d: [u8; 32] = d.try_into().unwrap();
                        let m = &model[&d];
                        assert!(
                            m.valid(now) && m.principal.as_bytes() == p_.as_slice(),
                            "{m:?}"
                        );
                    }
                    for (i, _) in ["alice", "bob", "carol"].iter().enumerate() {
                        let has = model
                            .values()
                            .any(|m| m.principal == principal(i as u8) && m.valid(now));
                        let listed = previous_release::entries(db, previous_release::TOKEN_NAMES)
                            .iter()
                            .any(|(k, _)| k.as_slice() == principal(i as u8).as_bytes());
                        assert_eq!(has, listed, "token_names_v1 lists principals with tokens");
                    }
                })
                .await;
                s.close().await;
            });
            Ok(())
        })
        .unwrap();
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
