//! The storage contract: one suite that every `Store` backend must pass.
//!
//! A backend's test binary declares `mod contract;` and invokes
//! `store_contract_tests!(async_fixture_fn)`, where the function returns a
//! [`Fixture`] holding a fresh, empty store (and whatever keeps it alive).

#![allow(dead_code)]

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use chrono::{Duration, Utc};
use devops_api::domain::{
    self, ListQuery, Order, Precondition, PrincipalName, Task, TaskChange, TaskFields, TaskId,
};
use devops_api::storage::{
    Clock, Created, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_TTL, Idempotency, ImportSet, ManualClock,
    NewTask, Record, StorageError, Store,
};
// The token cases and their helpers: `tokens.rs`.
pub mod tokens;
use devops_api::domain::TokenName;
use devops_api::storage::{NewToken, TokenInfo};
use serde_json::json;

pub struct Fixture {
    pub store: Arc<dyn Store>,
    /// The store's clock: it moves only when a case advances it.
    pub clock: Arc<ManualClock>,
    /// Dropped after the store: temp dirs, throwaway databases.
    pub _guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per contract case.
#[macro_export]
macro_rules! store_contract_tests {
    ($fixture:path) => {
        $crate::store_contract_tests!(@cases $fixture;
            create_then_get, other_owner_sees_nothing, list_pages_in_creation_order,
            list_pages_descending, pagination_is_stable_under_inserts_and_deletes,
            list_filters_combine, update_checks_version, noop_update_keeps_version,
            concurrent_conflicting_updates_one_wins, delete_checks_version_and_owner,
            idempotent_create_replays_and_rejects_other_bodies, quota_limits_creates,
            tokens_lifecycle, export_import_round_trip, import_refuses_non_empty_store,
            a_replacing_import_replaces_everything_at_once,
            concurrent_creates_are_all_durable_and_distinct, count_tasks_counts_everyone,
            a_replay_is_not_held_to_the_quota, a_quota_of_zero_refuses_every_create,
            preconditions_admit_any_version_they_list, tokens_are_listed_in_byte_order_of_names,
            filtered_pages_agree_with_a_model, a_spent_scan_budget_returns_a_partial_page,
            filtered_pagination_is_stable_under_writes);
        $crate::store_contract_tests!(@clock_cases $fixture;
            idempotency_keys_expire_after_their_window,
            sweep_deletes_only_expired_idempotency_records, sweep_works_through_a_backlog,
            a_deleted_task_still_replays_within_the_window, timestamps_come_from_the_store_clock,
            a_record_from_a_clock_stepped_back_is_fresh);
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = $fixture().await;
                contract::$case(fx.store.clone()).await;
                fx.store.close().await;
            }
        )*
    };
    (@clock_cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fx = $fixture().await;
                contract::$case(fx.store.clone(), fx.clock.clone()).await;
                fx.store.close().await;
            }
        )*
    };
}

/// The principal `name`.
pub fn p(name: &str) -> PrincipalName {
    PrincipalName::parse(name).expect("a principal name")
}

pub fn fields(body: serde_json::Value) -> TaskFields {
    domain::parse_create(&body).expect("valid test fields")
}

pub fn new_task(title: &str) -> NewTask {
    NewTask {
        fields: fields(json!({ "title": title })),
        idempotency: None,
        max_tasks: 1_000_000,
    }
}

pub async fn create(s: &dyn Store, owner: &str, body: serde_json::Value) -> Task {
    let new = NewTask {
        fields: fields(body),
        idempotency: None,
        max_tasks: 1_000_000,
    };
    match s.create_task(&p(owner), new).await.expect("create") {
        Created::New(t) => t,
        Created::Replayed(_) => panic!("a create without a key replayed"),
    }
}

fn page_query(limit: usize, order: Order, after: Option<TaskId>) -> ListQuery {
    ListQuery {
        limit,
        order,
        after,
        ..ListQuery::default()
    }
}

/// Every task of `owner` through pages of `limit`.
async fn all_pages(s: &dyn Store, owner: &str, mut q: ListQuery) -> Vec<TaskId> {
    let mut ids = Vec::new();
    loop {
        let page = s.list_tasks(&p(owner), &q).await.expect("list");
        assert!(page.items.len() <= q.limit);
        ids.extend(page.items.iter().map(|t| t.id));
        match page.next {
            Some(n) => {
                assert_eq!(
                    Some(n),
                    page.items.last().map(|t| t.id),
                    "next is the last item"
                );
                q.after = Some(n);
            }
            None => return ids,
        }
    }
}

pub async fn create_then_get(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(
        s,
        "alice",
        json!({"title": "Write", "description": "d", "status": "in_progress", "priority": "high",
               "due_at": "2030-05-01T12:00:00Z", "tags": ["x", "y"]}),
    )
    .await;
    assert_eq!(t.version, 1);
    assert_eq!(t.created_at, t.updated_at);
    assert!(Utc::now() - t.created_at < Duration::seconds(10));
    let got = s.get_task(&p("alice"), t.id).await.expect("get");
    assert_eq!(got, t);
    assert!(matches!(
        s.get_task(&p("alice"), TaskId::new()).await,
        Err(StorageError::NotFound)
    ));
}

pub async fn other_owner_sees_nothing(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(s, "alice", json!({"title": "secret"})).await;
    assert!(matches!(
        s.get_task(&p("bob"), t.id).await,
        Err(StorageError::NotFound)
    ));
    let page = s
        .list_tasks(&p("bob"), &page_query(10, Order::Asc, None))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    let change = TaskChange::Replace(fields(json!({"title": "mine now"})));
    assert!(matches!(
        s.update_task(&p("bob"), t.id, change, Precondition::Any)
            .await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.delete_task(&p("bob"), t.id, Precondition::Any).await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(s.get_task(&p("alice"), t.id).await.unwrap(), t);
    // A prefix of another owner's name is a different owner.
    assert!(matches!(
        s.get_task(&p("alic"), t.id).await,
        Err(StorageError::NotFound)
    ));
}

pub async fn list_pages_in_creation_order(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut made = Vec::new();
    for i in 0..25 {
        made.push(
            create(s, "alice", json!({"title": format!("t{i}")}))
                .await
                .id,
        );
    }
    create(s, "bob", json!({"title": "other"})).await;
    let got = all_pages(s, "alice", page_query(7, Order::Asc, None)).await;
    assert_eq!(got, made);
    let exact = all_pages(s, "alice", page_query(25, Order::Asc, None)).await;
    assert_eq!(exact, made, "a full last page has no next cursor");
}

pub async fn list_pages_descending(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut made = Vec::new();
    for i in 0..12 {
        made.push(
            create(s, "alice", json!({"title": format!("t{i}")}))
                .await
                .id,
        );
    }
    made.reverse();
    assert_eq!(
        all_pages(s, "alice", page_query(5, Order::Desc, None)).await,
        made
    );
}

pub async fn pagination_is_stable_under_inserts_and_deletes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut made = Vec::new();
    for i in 0..10 {
        made.push(
            create(s, "alice", json!({"title": format!("t{i}")}))
                .await
                .id,
        );
    }
    let first = s
        .list_tasks(&p("alice"), &page_query(4, Order::Asc, None))
        .await
        .unwrap();
    let cursor = first.next.expect("more pages");
    // Delete one already seen and one not yet seen; add a new one.
    s.delete_task(&p("alice"), made[1], Precondition::Any)
        .await
        .unwrap();
    s.delete_task(&p("alice"), made[6], Precondition::Any)
        .await
        .unwrap();
    let added = create(s, "alice", json!({"title": "new"})).await.id;
    let rest = all_pages(s, "alice", page_query(4, Order::Asc, Some(cursor))).await;
    let mut expected: Vec<_> = made[4..]
        .iter()
        .copied()
        .filter(|id| *id != made[6])
        .collect();
    expected.push(added);
    assert_eq!(rest, expected, "no task skipped or repeated");
}

pub async fn list_filters_combine(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let a = create(s, "alice", json!({"title": "Deploy API", "status": "done", "priority": "high", "tags": ["ops"], "due_at": "2030-01-01T00:00:00Z"})).await;
    let b = create(s, "alice", json!({"title": "deploy docs", "status": "todo", "priority": "high", "tags": ["docs", "ops"], "due_at": "2031-01-01T00:00:00Z"})).await;
    let c = create(
        s,
        "alice",
        json!({"title": "Write tests", "status": "todo", "priority": "low"}),
    )
    .await;
    let q = |f: fn(&mut ListQuery)| {
        let mut q = page_query(100, Order::Asc, None);
        f(&mut q);
        q
    };
    let ids = |p: devops_api::storage::Page| p.items.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .list_tasks(&p("alice"), &q(|q| q.status = Some(domain::Status::Todo)))
            .await
            .unwrap()),
        [b.id, c.id]
    );
    assert_eq!(
        ids(s
            .list_tasks(
                &p("alice"),
                &q(|q| q.priority = Some(domain::Priority::High))
            )
            .await
            .unwrap()),
        [a.id, b.id]
    );
    assert_eq!(
        ids(s
            .list_tasks(&p("alice"), &q(|q| q.tag = Some("docs".into())))
            .await
            .unwrap()),
        [b.id]
    );
    assert_eq!(
        ids(s
            .list_tasks(&p("alice"), &q(|q| q.q = Some("deploy".into())))
            .await
            .unwrap()),
        [a.id, b.id]
    );
    assert_eq!(
        ids(s
            .list_tasks(&p("alice"), &q(|q| q.q = Some("%".into())))
            .await
            .unwrap()),
        Vec::<TaskId>::new(),
        "no wildcards"
    );
    assert_eq!(
        ids(s
            .list_tasks(
                &p("alice"),
                &q(|q| q.due_before = Some("2030-06-01T00:00:00Z".parse().unwrap()))
            )
            .await
            .unwrap()),
        [a.id],
        "tasks without due date never match due_before"
    );
    assert_eq!(
        ids(s
            .list_tasks(
                &p("alice"),
                &q(|q| {
                    q.tag = Some("ops".into());
                    q.status = Some(domain::Status::Todo);
                })
            )
            .await
            .unwrap()),
        [b.id]
    );
    // Filters and pagination together: pages hold only matches.
    let mut fq = page_query(1, Order::Desc, None);
    fq.tag = Some("ops".into());
    assert_eq!(all_pages(s, "alice", fq).await, [b.id, a.id]);
}

pub async fn update_checks_version(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(s, "alice", json!({"title": "a"})).await;
    let change = |title: &str| TaskChange::Replace(fields(json!({"title": title})));
    let t2 = s
        .update_task(&p("alice"), t.id, change("b"), Precondition::version(1))
        .await
        .unwrap();
    assert_eq!((t2.version, t2.fields.title.as_str()), (2, "b"));
    assert!(t2.updated_at >= t.updated_at);
    assert_eq!(t2.created_at, t.created_at);
    assert!(matches!(
        s.update_task(&p("alice"), t.id, change("c"), Precondition::version(1))
            .await,
        Err(StorageError::VersionMismatch { current: 2 })
    ));
    let t3 = s
        .update_task(&p("alice"), t.id, change("c"), Precondition::Any)
        .await
        .unwrap();
    assert_eq!(t3.version, 3);
    assert_eq!(s.get_task(&p("alice"), t.id).await.unwrap(), t3);
    assert!(matches!(
        s.update_task(&p("alice"), TaskId::new(), change("x"), Precondition::Any)
            .await,
        Err(StorageError::NotFound)
    ));
    let merged = domain::parse_merge_patch(&json!({"status": "done"})).unwrap();
    let t4 = s
        .update_task(&p("alice"), t.id, merged, Precondition::version(3))
        .await
        .unwrap();
    assert_eq!(
        (t4.version, t4.fields.status, t4.fields.title.as_str()),
        (4, domain::Status::Done, "c")
    );
}

pub async fn noop_update_keeps_version(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(s, "alice", json!({"title": "a", "tags": ["x"]})).await;
    let same = TaskChange::Replace(t.fields.clone());
    let back = s
        .update_task(&p("alice"), t.id, same, Precondition::version(1))
        .await
        .unwrap();
    assert_eq!(back, t);
}

pub async fn concurrent_conflicting_updates_one_wins(store: Arc<dyn Store>) {
    let s = store.as_ref();
    for round in 0..5 {
        let t = create(s, "alice", json!({"title": format!("r{round}")})).await;
        let alice = p("alice");
        let (a, b) = tokio::join!(
            s.update_task(
                &alice,
                t.id,
                TaskChange::Replace(fields(json!({"title": "A"}))),
                Precondition::version(1)
            ),
            s.update_task(
                &alice,
                t.id,
                TaskChange::Replace(fields(json!({"title": "B"}))),
                Precondition::version(1)
            ),
        );
        let wins = [a.is_ok(), b.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "exactly one of two conflicting updates wins");
        for r in [a, b] {
            if let Err(e) = r {
                assert!(
                    matches!(e, StorageError::VersionMismatch { current: 2 }),
                    "{e:?}"
                );
            }
        }
        assert_eq!(s.get_task(&p("alice"), t.id).await.unwrap().version, 2);
    }
}

pub async fn delete_checks_version_and_owner(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(s, "alice", json!({"title": "a"})).await;
    assert!(matches!(
        s.delete_task(&p("alice"), t.id, Precondition::version(7))
            .await,
        Err(StorageError::VersionMismatch { current: 1 })
    ));
    s.delete_task(&p("alice"), t.id, Precondition::version(1))
        .await
        .unwrap();
    assert!(matches!(
        s.get_task(&p("alice"), t.id).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.delete_task(&p("alice"), t.id, Precondition::Any).await,
        Err(StorageError::NotFound)
    ));
}

pub async fn idempotent_create_replays_and_rejects_other_bodies(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let key = |k: &str, digest: u8| Idempotency {
        key: k.into(),
        request_digest: [digest; 32],
    };
    let with = |title: &str, idem| NewTask {
        fields: fields(json!({ "title": title })),
        idempotency: Some(idem),
        max_tasks: 100,
    };
    let first = s
        .create_task(&p("alice"), with("a", key("k1", 1)))
        .await
        .unwrap();
    let Created::New(t) = first else {
        panic!("first use creates")
    };
    let again = s
        .create_task(&p("alice"), with("a", key("k1", 1)))
        .await
        .unwrap();
    assert_eq!(again, Created::Replayed(t.clone()));
    assert!(matches!(
        s.create_task(&p("alice"), with("b", key("k1", 2))).await,
        Err(StorageError::IdempotencyMismatch)
    ));
    // Keys are per principal.
    assert!(matches!(
        s.create_task(&p("bob"), with("a", key("k1", 1)))
            .await
            .unwrap(),
        Created::New(_)
    ));
    let page = s
        .list_tasks(&p("alice"), &page_query(10, Order::Asc, None))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1, "a replay creates nothing");
    // A replay returns the original even after the task changed.
    s.update_task(
        &p("alice"),
        t.id,
        TaskChange::Replace(fields(json!({"title": "z"}))),
        Precondition::Any,
    )
    .await
    .unwrap();
    assert_eq!(
        s.create_task(&p("alice"), with("a", key("k1", 1)))
            .await
            .unwrap(),
        Created::Replayed(t)
    );
}

pub async fn quota_limits_creates(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let capped = |title: &str| NewTask {
        max_tasks: 2,
        ..new_task(title)
    };
    s.create_task(&p("alice"), capped("1")).await.unwrap();
    let t2 = s.create_task(&p("alice"), capped("2")).await.unwrap();
    assert!(matches!(
        s.create_task(&p("alice"), capped("3")).await,
        Err(StorageError::QuotaExceeded { max: 2 })
    ));
    s.create_task(&p("bob"), capped("other owner"))
        .await
        .unwrap();
    s.delete_task(&p("alice"), t2.task().id, Precondition::Any)
        .await
        .unwrap();
    s.create_task(&p("alice"), capped("3"))
        .await
        .expect("room after a delete");
}

pub async fn tokens_lifecycle(store: Arc<dyn Store>) {
    let s = store.as_ref();
    assert!(s.list_tokens().await.unwrap().is_empty());
    let info = s
        .create_token(NewToken::default_for(p("ci"), [7; 32]))
        .await
        .unwrap();
    assert_eq!(info.principal, "ci");
    assert_eq!(s.principal(&[7; 32]).await.unwrap().as_deref(), Some("ci"));
    assert_eq!(s.principal(&[8; 32]).await.unwrap(), None);
    assert!(matches!(
        s.create_token(NewToken::default_for(p("ci"), [9; 32]))
            .await,
        Err(StorageError::AlreadyExists(_))
    ));
    s.create_token(NewToken::default_for(p("admin"), [1; 32]))
        .await
        .unwrap();
    let names: Vec<_> = s
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.principal)
        .collect();
    assert_eq!(names, ["admin", "ci"]);
    s.revoke_token(&p("ci"), &TokenName::default_name())
        .await
        .unwrap();
    assert_eq!(s.principal(&[7; 32]).await.unwrap(), None);
    assert!(matches!(
        s.revoke_token(&p("ci"), &TokenName::default_name()).await,
        Err(StorageError::NotFound)
    ));
    s.create_token(NewToken::default_for(p("ci"), [9; 32]))
        .await
        .expect("a revoked name can get a new token");
}

pub async fn export_import_round_trip(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let a = create(
        s,
        "alice",
        json!({"title": "a", "tags": ["x"], "due_at": "2030-01-01T00:00:00.123456Z"}),
    )
    .await;
    let b = create(s, "bob", json!({"title": "b"})).await;
    s.update_task(
        &p("alice"),
        a.id,
        domain::parse_merge_patch(&json!({"status": "done"})).unwrap(),
        Precondition::Any,
    )
    .await
    .unwrap();
    s.create_token(NewToken::default_for(p("alice"), [3; 32]))
        .await
        .unwrap();
    let export = s.export().await.unwrap();
    assert!(export.unreadable.is_empty());
    let records = export.records;
    assert_eq!(records.len(), 3);
    // Import into the same backend kind after emptying it.
    s.delete_task(&p("alice"), a.id, Precondition::Any)
        .await
        .unwrap();
    s.delete_task(&p("bob"), b.id, Precondition::Any)
        .await
        .unwrap();
    s.revoke_token(&p("alice"), &TokenName::default_name())
        .await
        .unwrap();
    let set = ImportSet::validate(records.clone()).unwrap();
    assert_eq!(s.import(set).await.unwrap(), 3);
    let mut again = s.export().await.unwrap().records;
    let mut orig = records;
    let key = |r: &Record| format!("{r:?}");
    again.sort_by_key(key);
    orig.sort_by_key(key);
    assert_eq!(again, orig);
    assert_eq!(s.get_task(&p("alice"), a.id).await.unwrap().version, 2);
    assert_eq!(
        s.principal(&[3; 32]).await.unwrap().as_deref(),
        Some("alice")
    );
    // Counts were rebuilt: quota still applies per owner.
    let capped = NewTask {
        max_tasks: 1,
        ..new_task("over")
    };
    assert!(matches!(
        s.create_task(&p("bob"), capped).await,
        Err(StorageError::QuotaExceeded { max: 1 })
    ));
}

pub async fn import_refuses_non_empty_store(store: Arc<dyn Store>) {
    let s = store.as_ref();
    create(s, "alice", json!({"title": "a"})).await;
    let before = s.export().await.unwrap().records;
    let mut records = before.clone();
    records.push(Record::Token(TokenInfo::new(
        &NewToken::default_for(p("bob"), [4u8; 32]),
        domain::now(),
    )));
    let set = ImportSet::validate(records).unwrap();
    assert!(matches!(
        s.import(set).await,
        Err(StorageError::AlreadyExists(_))
    ));
    assert_eq!(
        s.export().await.unwrap().records,
        before,
        "nothing was written"
    );
    assert_eq!(s.principal(&[4; 32]).await.unwrap(), None);
}

/// `restore --force`: the old tasks, tokens, quota counts and idempotency
/// records are gone and the new ones are in, from one transaction.
pub async fn a_replacing_import_replaces_everything_at_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut keyed = new_task("keyed");
    keyed.idempotency = Some(devops_api::storage::Idempotency {
        key: "k1".into(),
        request_digest: [1; 32],
    });
    let old = s.create_task(&p("alice"), keyed).await.unwrap();
    s.create_token(NewToken::default_for(p("alice"), [3; 32]))
        .await
        .unwrap();
    let new = Task::create(fields(json!({"title": "new"})));
    let records = vec![
        Record::Task {
            owner: p("bob"),
            task: new.clone(),
        },
        Record::Token(TokenInfo::new(
            &NewToken::default_for(p("bob"), [4u8; 32]),
            domain::now(),
        )),
    ];
    let set = ImportSet::validate(records.clone()).unwrap().replacing();
    assert_eq!(s.import(set).await.unwrap(), 2);
    let mut back = s.export().await.unwrap().records;
    back.sort_by_key(|r| format!("{r:?}"));
    let mut want = records;
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(back, want);
    assert_eq!(s.principal(&[3; 32]).await.unwrap(), None, "old token gone");
    assert_eq!(s.principal(&[4; 32]).await.unwrap(), Some(p("bob")));
    assert!(matches!(
        s.get_task(&p("alice"), old.task().id).await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(s.count_tasks().await.unwrap(), 1);
    // The old idempotency record went with its task (the key creates anew),
    // and alice's quota count with her tasks (a quota of 1 admits one).
    let mut again = new_task("keyed");
    again.max_tasks = 1;
    again.idempotency = Some(devops_api::storage::Idempotency {
        key: "k1".into(),
        request_digest: [1; 32],
    });
    assert!(matches!(
        s.create_task(&p("alice"), again).await.unwrap(),
        Created::New(_)
    ));
}

pub async fn concurrent_creates_are_all_durable_and_distinct(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let s = store.clone();
        set.spawn(async move { s.create_task(&p("alice"), new_task(&format!("t{i}"))).await });
    }
    let mut ids = HashSet::new();
    while let Some(r) = set.join_next().await {
        ids.insert(r.unwrap().unwrap().task().id);
    }
    assert_eq!(ids.len(), 200);
    let listed: HashSet<_> = all_pages(s, "alice", page_query(100, Order::Asc, None))
        .await
        .into_iter()
        .collect();
    assert_eq!(listed, ids);
}

pub async fn count_tasks_counts_everyone(store: Arc<dyn Store>) {
    let s = store.as_ref();
    create(s, "alice", json!({"title": "a"})).await;
    create(s, "bob", json!({"title": "b"})).await;
    assert_eq!(s.count_tasks().await.unwrap(), 2);
}

/// A create of `title` with idempotency key `key`.
pub fn keyed_new_task(title: &str, key: &str) -> NewTask {
    keyed(title, key, 1)
}

fn keyed(title: &str, key: &str, digest: u8) -> NewTask {
    NewTask {
        fields: fields(json!({ "title": title })),
        idempotency: Some(Idempotency {
            key: key.into(),
            request_digest: [digest; 32],
        }),
        max_tasks: 1_000_000,
    }
}

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

/// A key answers with its first task for 24 hours, by the store's clock, and
/// then starts afresh (expiry on read, before any sweep).
pub async fn idempotency_keys_expire_after_their_window(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    let first = s
        .create_task(&p("alice"), keyed("a", "k", 1))
        .await
        .unwrap();
    let Created::New(t) = first else {
        panic!("first use creates")
    };
    clock.advance(IDEMPOTENCY_TTL - SECOND);
    assert_eq!(
        s.create_task(&p("alice"), keyed("a", "k", 1))
            .await
            .unwrap(),
        Created::Replayed(t.clone()),
        "within the window"
    );
    assert!(matches!(
        s.create_task(&p("alice"), keyed("b", "k", 2)).await,
        Err(StorageError::IdempotencyMismatch)
    ));
    clock.advance(SECOND);
    let again = s
        .create_task(&p("alice"), keyed("b", "k", 2))
        .await
        .unwrap();
    let Created::New(t2) = again else {
        panic!("an expired key creates anew: {again:?}")
    };
    assert_ne!(t2.id, t.id);
    assert_eq!(
        s.create_task(&p("alice"), keyed("b", "k", 2))
            .await
            .unwrap(),
        Created::Replayed(t2),
        "the key now answers for the new task"
    );
    assert_eq!(
        s.sweep_expired().await.unwrap(),
        0,
        "the renewed record is fresh"
    );
}

/// The sweep deletes exactly the records older than the window.
pub async fn sweep_deletes_only_expired_idempotency_records(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    for i in 0..3 {
        s.create_task(&p("alice"), keyed("old", &format!("k{i}"), 1))
            .await
            .unwrap();
    }
    s.create_task(&p("bob"), keyed("old", "k0", 1))
        .await
        .unwrap();
    assert_eq!(s.sweep_expired().await.unwrap(), 0, "nothing expired yet");
    clock.advance(IDEMPOTENCY_TTL / 2);
    let fresh = s
        .create_task(&p("alice"), keyed("new", "k9", 1))
        .await
        .unwrap();
    clock.advance(IDEMPOTENCY_TTL / 2);
    assert_eq!(s.sweep_expired().await.unwrap(), 4);
    assert_eq!(s.sweep_expired().await.unwrap(), 0);
    assert_eq!(
        s.create_task(&p("alice"), keyed("new", "k9", 1))
            .await
            .unwrap(),
        Created::Replayed(fresh.task().clone()),
        "a fresh record survives the sweep"
    );
    assert!(
        matches!(
            s.create_task(&p("alice"), keyed("other", "k0", 2))
                .await
                .unwrap(),
            Created::New(_)
        ),
        "a swept key is free"
    );
    assert_eq!(
        s.count_tasks().await.unwrap(),
        6,
        "the sweep deletes no task"
    );
}

/// More expired records than one sweep commit takes are all deleted.
pub async fn sweep_works_through_a_backlog(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let n = IDEMPOTENCY_SWEEP_CHUNK + 7;
    // A few creates in flight at a time (batched commits on redb), never
    // more than a PostgreSQL pool holds: with all of them at once, a busy
    // machine made some wait past the pool's timeout (503 Busy), which is
    // overload shedding, not what this case is about.
    let mut set = tokio::task::JoinSet::<devops_api::storage::StoreResult<Created>>::new();
    for i in 0..n {
        if set.len() == 4 {
            set.join_next().await.unwrap().unwrap().unwrap();
        }
        let s = store.clone();
        set.spawn(async move {
            s.create_task(&p("alice"), keyed("t", &format!("k{i}"), 1))
                .await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    clock.advance(IDEMPOTENCY_TTL + SECOND);
    assert_eq!(store.sweep_expired().await.unwrap(), n as u64);
    assert_eq!(store.sweep_expired().await.unwrap(), 0);
}

/// Deleting a task keeps its idempotency record until the window ends: a
/// retry of the create that made it must not make it again.
pub async fn a_deleted_task_still_replays_within_the_window(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    let Created::New(t) = s
        .create_task(&p("alice"), keyed("a", "k", 1))
        .await
        .unwrap()
    else {
        panic!("first use creates")
    };
    s.delete_task(&p("alice"), t.id, Precondition::Any)
        .await
        .unwrap();
    assert_eq!(
        s.create_task(&p("alice"), keyed("a", "k", 1))
            .await
            .unwrap(),
        Created::Replayed(t),
    );
    assert_eq!(
        s.count_tasks().await.unwrap(),
        0,
        "a replay creates nothing"
    );
    clock.advance(IDEMPOTENCY_TTL + SECOND);
    assert_eq!(s.sweep_expired().await.unwrap(), 1);
}

/// Tasks and tokens are dated by the store's clock.
pub async fn timestamps_come_from_the_store_clock(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    clock.advance(std::time::Duration::from_secs(3600 * 24 * 400));
    let t = create(s, "alice", json!({"title": "later"})).await;
    assert_eq!(t.created_at, clock.now());
    clock.advance(SECOND);
    let u = s
        .update_task(
            &p("alice"),
            t.id,
            TaskChange::Replace(fields(json!({"title": "changed"}))),
            Precondition::Any,
        )
        .await
        .unwrap();
    assert_eq!(u.updated_at, clock.now());
    let token = s
        .create_token(NewToken::default_for(p("ci"), [1; 32]))
        .await
        .unwrap();
    assert_eq!(token.created_at, clock.now());
}

/// A replay writes nothing, so an owner at the quota still gets it; a new
/// create is refused.
pub async fn a_replay_is_not_held_to_the_quota(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let capped = |title: &str, key: &str, digest: u8| NewTask {
        max_tasks: 1,
        ..keyed(title, key, digest)
    };
    let Created::New(t) = s
        .create_task(&p("alice"), capped("a", "k", 1))
        .await
        .unwrap()
    else {
        panic!("first use creates")
    };
    assert_eq!(
        s.create_task(&p("alice"), capped("a", "k", 1))
            .await
            .unwrap(),
        Created::Replayed(t)
    );
    assert!(matches!(
        s.create_task(&p("alice"), capped("b", "k2", 1)).await,
        Err(StorageError::QuotaExceeded { max: 1 })
    ));
    assert!(matches!(
        s.create_task(&p("alice"), capped("b", "k", 2)).await,
        Err(StorageError::IdempotencyMismatch)
    ));
    assert_eq!(s.count_tasks().await.unwrap(), 1);
}

/// A quota of 0 refuses the first create as it refuses any other, and the
/// refused create leaves no trace (the next one with room works).
pub async fn a_quota_of_zero_refuses_every_create(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let none = NewTask {
        max_tasks: 0,
        ..keyed_new_task("a", "k")
    };
    assert!(matches!(
        s.create_task(&p("alice"), none).await,
        Err(StorageError::QuotaExceeded { max: 0 })
    ));
    assert_eq!(s.count_tasks().await.unwrap(), 0);
    let one = NewTask {
        max_tasks: 1,
        ..keyed_new_task("a", "k")
    };
    assert!(matches!(
        s.create_task(&p("alice"), one).await.unwrap(),
        Created::New(_)
    ));
}

/// `If-Match` with several entity tags: a write goes through when the stored
/// version is any of them, and is refused (reporting the stored version)
/// when it is none, also for a list without a valid tag.
pub async fn preconditions_admit_any_version_they_list(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = create(s, "alice", json!({"title": "a"})).await;
    let change = |title: &str| TaskChange::Replace(fields(json!({ "title": title })));
    let t2 = s
        .update_task(
            &p("alice"),
            t.id,
            change("b"),
            Precondition::Versions(vec![5, 1]),
        )
        .await
        .unwrap();
    assert_eq!(t2.version, 2);
    for refused in [vec![1], vec![], vec![3, 4]] {
        assert!(matches!(
            s.update_task(
                &p("alice"),
                t.id,
                change("c"),
                Precondition::Versions(refused.clone())
            )
            .await,
            Err(StorageError::VersionMismatch { current: 2 })
        ));
        assert!(matches!(
            s.delete_task(&p("alice"), t.id, Precondition::Versions(refused))
                .await,
            Err(StorageError::VersionMismatch { current: 2 })
        ));
    }
    assert_eq!(s.get_task(&p("alice"), t.id).await.unwrap(), t2);
    s.delete_task(&p("alice"), t.id, Precondition::Versions(vec![2, 9]))
        .await
        .unwrap();
    assert!(matches!(
        s.delete_task(&p("alice"), t.id, Precondition::Versions(vec![2]))
            .await,
        Err(StorageError::NotFound)
    ));
}

/// Tokens are listed by name in byte order (upper case before lower case,
/// `-` before `.` before `_`), whatever the backend's collation.
pub async fn tokens_are_listed_in_byte_order_of_names(store: Arc<dyn Store>) {
    let s = store.as_ref();
    for (i, name) in ["a_b", "Z9", "a", "B", "a.b", "a-b"].iter().enumerate() {
        s.create_token(NewToken::default_for(p(name), [i as u8; 32]))
            .await
            .unwrap();
    }
    let names: Vec<_> = s
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.principal)
        .collect();
    assert_eq!(names, ["B", "Z9", "a", "a-b", "a.b", "a_b"]);
}

/// An idempotency record dated after the store's clock (the clock was
/// stepped back) is fresh: it replays, refuses another body and is not
/// swept, until its window has passed by the clock.
pub async fn a_record_from_a_clock_stepped_back_is_fresh(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    let Created::New(t) = s
        .create_task(&p("alice"), keyed("a", "k", 1))
        .await
        .unwrap()
    else {
        panic!("first use creates")
    };
    let hour = std::time::Duration::from_secs(3600);
    clock.rewind(hour);
    assert_eq!(
        s.create_task(&p("alice"), keyed("a", "k", 1))
            .await
            .unwrap(),
        Created::Replayed(t.clone())
    );
    assert!(matches!(
        s.create_task(&p("alice"), keyed("b", "k", 2)).await,
        Err(StorageError::IdempotencyMismatch)
    ));
    assert_eq!(s.sweep_expired().await.unwrap(), 0);
    clock.advance(hour + IDEMPOTENCY_TTL);
    assert_eq!(s.sweep_expired().await.unwrap(), 1);
    assert!(matches!(
        s.create_task(&p("alice"), keyed("b", "k", 2))
            .await
            .unwrap(),
        Created::New(_)
    ));
}

/// A small deterministic generator, so that a failing case names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const MODEL_TAGS: [&str; 4] = ["a", "b", "c", "rare"];
const MODEL_DUES: [&str; 4] = [
    "2030-01-01T00:00:00Z",
    "2030-01-02T00:00:00Z",
    "2030-01-02T00:00:00.000001Z",
    "2031-06-01T12:00:00Z",
];
const MODEL_WORDS: [&str; 4] = ["alpha", "Beta", "gamma deploy", "DELTA"];

/// Random filterable fields as a JSON body; `partial` leaves some out (a merge patch).
fn model_body(r: &mut Rng, partial: bool) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    let mut set = |r: &mut Rng, k: &str, v: serde_json::Value| {
        if !partial || r.chance(50) {
            body.insert(k.into(), v);
        }
    };
    let title = format!("{} {}", r.pick(&MODEL_WORDS), r.below(1000));
    set(r, "title", json!(title));
    let status = r.pick(&domain::Status::ALL).as_str();
    set(r, "status", json!(status));
    let priority = r.pick(&domain::Priority::ALL).as_str();
    set(r, "priority", json!(priority));
    let tags: Vec<&str> = MODEL_TAGS
        .iter()
        .copied()
        .filter(|t| r.chance(if *t == "rare" { 5 } else { 35 }))
        .collect();
    set(r, "tags", json!(tags));
    let due = if r.chance(30) {
        serde_json::Value::Null
    } else {
        json!(r.pick(&MODEL_DUES))
    };
    if !due.is_null() || partial {
        set(r, "due_at", due);
    }
    serde_json::Value::Object(body)
}

/// One random write on `owner`'s tasks, applied to the store and to `model`.
async fn model_write(
    s: &dyn Store,
    r: &mut Rng,
    owner: &str,
    model: &mut std::collections::BTreeMap<TaskId, Task>,
) -> TaskId {
    let existing: Vec<TaskId> = model.keys().copied().collect();
    let roll = r.below(100);
    if existing.is_empty() || roll < 55 {
        let t = create(s, owner, model_body(r, false)).await;
        model.insert(t.id, t.clone());
        t.id
    } else if roll < 85 {
        let id = r.pick(&existing);
        let change = domain::parse_merge_patch(&model_body(r, true)).expect("a valid patch");
        let t = s
            .update_task(&p(owner), id, change, Precondition::Any)
            .await
            .expect("update");
        model.insert(id, t);
        id
    } else {
        let id = r.pick(&existing);
        s.delete_task(&p(owner), id, Precondition::Any)
            .await
            .expect("delete");
        model.remove(&id);
        id
    }
}

/// A random query: any combination of filters, order, page size and budget.
fn model_query(r: &mut Rng) -> ListQuery {
    let mut q = ListQuery {
        limit: 1 + r.below(7),
        order: r.pick(&Order::ALL),
        scan_budget: r.pick(&[2, 8, 40, domain::SCAN_BUDGET, domain::SCAN_BUDGET]),
        ..ListQuery::default()
    };
    if r.chance(40) {
        q.status = Some(r.pick(&domain::Status::ALL));
    }
    if r.chance(40) {
        q.priority = Some(r.pick(&domain::Priority::ALL));
    }
    if r.chance(40) {
        q.tag = Some(r.pick(&["a", "b", "c", "rare", "absent"]).to_owned());
    }
    if r.chance(35) {
        q.due_before = Some(r.pick(&MODEL_DUES).parse().unwrap());
    }
    if r.chance(25) {
        q.q = Some(r.pick(&["alpha", "deploy", "ta", "1", "zzz"]).to_owned());
    }
    q
}

/// Pages through `q`, checking each page; returns the ids listed.
async fn model_pages(s: &dyn Store, owner: &str, mut q: ListQuery) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = Vec::new();
    for _ in 0..10_000 {
        let page = s.list_tasks(&p(owner), &q).await.expect("list");
        assert!(page.items.len() <= q.limit, "{q:?}");
        for t in &page.items {
            assert!(q.matches(t), "a listed task does not match {q:?}: {t:?}");
        }
        if q.scan_budget == domain::SCAN_BUDGET
            && let Some(n) = page.next
        {
            // Within the budget, a page with a next page is full.
            assert_eq!(page.items.len(), q.limit, "{q:?}");
            assert_eq!(Some(n), page.items.last().map(|t| t.id), "{q:?}");
        }
        ids.extend(page.items.iter().map(|t| t.id));
        match page.next {
            Some(n) => {
                // The position moves on in the page's order.
                if let Some(a) = q.after {
                    assert!(
                        (q.order == Order::Asc && n > a) || (q.order == Order::Desc && n < a),
                        "the cursor did not advance: {q:?}"
                    );
                }
                q.after = Some(n);
            }
            None => return ids,
        }
    }
    panic!("a listing did not end: {q:?}");
}

fn model_expect(model: &std::collections::BTreeMap<TaskId, Task>, q: &ListQuery) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = model
        .values()
        .filter(|t| q.matches(t))
        .map(|t| t.id)
        .collect();
    if q.order == Order::Desc {
        ids.reverse();
    }
    ids
}

/// Every filter and combination, in both orders, with every page size and
/// scan budget, against a naive filter over the same random tasks after
/// random creates, updates and deletes; the indexes agree with the records.
/// Index repairs run all along: on indexes kept by every write they find
/// nothing to change, whatever writes happen between their reads and their
/// writes.
pub async fn filtered_pages_agree_with_a_model(store: Arc<dyn Store>) {
    let s = store.as_ref();
    for seed in 1..=2u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let owner = format!("model{seed}");
        let mut model = std::collections::BTreeMap::new();
        let mut other = std::collections::BTreeMap::new();
        let writing = std::sync::atomic::AtomicBool::new(true);
        let writes = async {
            for _ in 0..120 {
                model_write(s, &mut r, &owner, &mut model).await;
                if r.chance(10) {
                    // Another owner's tasks never show up.
                    model_write(s, &mut r, &format!("other{seed}"), &mut other).await;
                }
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        };
        let repairs = async {
            let mut repaired = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                repaired += s.repair_indexes().await.expect("repair").repaired();
                tokio::task::yield_now().await;
            }
            repaired
        };
        let ((), repaired) = tokio::join!(writes, repairs);
        assert_eq!(
            repaired, 0,
            "seed {seed}: a repair changed a consistent index"
        );
        let check = s.check_indexes().await.expect("check indexes");
        assert!(check.is_consistent(), "seed {seed}: {check:?}");
        for i in 0..50 {
            let q = model_query(&mut r);
            let got = model_pages(s, &owner, q.clone()).await;
            assert_eq!(
                got,
                model_expect(&model, &q),
                "seed {seed}, query {i}: {q:?}"
            );
        }
    }
}

/// A page whose budget runs out before it fills ends at the last candidate
/// examined, with what it found; the listing goes on from there to the end.
pub async fn a_spent_scan_budget_returns_a_partial_page(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut made = Vec::new();
    for i in 0..10 {
        let title = if i == 6 { "yes" } else { "no" };
        made.push(create(s, "alice", json!({"title": title, "tags": ["t"]})).await);
    }
    for tag in [None, Some("t")] {
        let q = ListQuery {
            limit: 2,
            q: Some("yes".into()),
            tag: tag.map(Into::into),
            scan_budget: 4,
            ..ListQuery::default()
        };
        let page = s.list_tasks(&p("alice"), &q).await.unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next, Some(made[3].id), "the 4th candidate");
        let page = s
            .list_tasks(
                &p("alice"),
                &ListQuery {
                    after: page.next,
                    ..q.clone()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.items, vec![made[6].clone()]);
        assert_eq!(page.next, Some(made[7].id));
        let page = s
            .list_tasks(
                &p("alice"),
                &ListQuery {
                    after: page.next,
                    ..q.clone()
                },
            )
            .await
            .unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next, None, "the candidates ran out within the budget");
        // Descending, from the newest.
        let page = s
            .list_tasks(
                &p("alice"),
                &ListQuery {
                    order: Order::Desc,
                    ..q.clone()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.items, vec![made[6].clone()]);
        assert_eq!(page.next, Some(made[6].id));
    }
}

/// Pages of a filtered listing while other requests write between them:
/// no task is listed twice, and every task that matched and was left alone
/// throughout is listed, on every driving index and budget.
pub async fn filtered_pagination_is_stable_under_writes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut r = Rng(0x5eed);
    let mut model = std::collections::BTreeMap::new();
    for _ in 0..60 {
        model_write(s, &mut r, "alice", &mut model).await;
    }
    for i in 0..25 {
        let mut q = model_query(&mut r);
        let before = model.clone();
        let mut touched = HashSet::new();
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let page = s.list_tasks(&p("alice"), &q).await.expect("list");
            for t in &page.items {
                assert!(q.matches(t), "query {i}: {q:?}");
            }
            seen.extend(page.items.iter().map(|t| t.id));
            for _ in 0..r.below(3) {
                touched.insert(model_write(s, &mut r, "alice", &mut model).await);
            }
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "query {i}: a task was listed twice"
        );
        let mut sorted = seen.clone();
        sorted.sort();
        if q.order == Order::Desc {
            sorted.reverse();
        }
        assert_eq!(sorted, seen, "query {i}: out of order");
        for t in before.values() {
            if q.matches(t) && !touched.contains(&t.id) {
                assert!(unique.contains(&t.id), "query {i}: {q:?} skipped {}", t.id);
            }
        }
    }
    let check = s.check_indexes().await.expect("check indexes");
    assert!(check.is_consistent(), "{check:?}");
}
