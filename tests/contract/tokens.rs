//! The storage contract for tokens: several named tokens per principal,
//! expiry, rotation with a grace period, last-use times, and tokens in
//! export/import. A backend's test binary invokes
//! `token_contract_tests!(async_fixture_fn)` beside `store_contract_tests!`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use devops_api::domain::{PrincipalName, TokenDigest, TokenName};
use devops_api::storage::{
    Clock, ImportSet, ManualClock, NewToken, Record, StorageError, Store, TOKEN_USE_INTERVAL,
};

/// Generates one `#[tokio::test]` per token contract case.
#[macro_export]
macro_rules! token_contract_tests {
    ($fixture:path) => {
        $crate::token_contract_tests!(@cases $fixture;
            several_named_tokens_per_principal, expired_tokens_are_refused,
            rotation_keeps_the_old_token_for_its_grace, a_rotation_never_extends_an_expiry,
            last_use_is_noted_in_memory_and_written_later, named_tokens_survive_export_and_import,
            a_token_from_before_names_is_the_default_one);
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        mod token_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fx = $fixture().await;
                    contract::tokens::$case(fx.store.clone(), fx.clock.clone()).await;
                    fx.store.close().await;
                }
            )*
        }
    };
}

fn p(s: &str) -> PrincipalName {
    PrincipalName::parse(s).unwrap()
}

fn n(s: &str) -> TokenName {
    TokenName::parse(s).unwrap()
}

fn new(principal: &str, name: &str, digest: u8) -> NewToken {
    NewToken {
        principal: p(principal),
        name: n(name),
        digest: [digest; 32],
        expires_at: None,
    }
}

async fn who(s: &dyn Store, digest: u8) -> Option<String> {
    s.principal(&[digest; 32])
        .await
        .unwrap()
        .map(|p| p.to_string())
}

/// `(principal, name, digest byte)` of every listed token, in listing order.
async fn listed(s: &dyn Store) -> Vec<(String, String, u8)> {
    s.list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.principal.to_string(), t.name.to_string(), t.digest[0]))
        .collect()
}

fn own(v: &[(&str, &str, u8)]) -> Vec<(String, String, u8)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect()
}

pub async fn several_named_tokens_per_principal(store: Arc<dyn Store>, _clock: Arc<ManualClock>) {
    let s = store.as_ref();
    s.create_token(new("alice", "laptop", 1)).await.unwrap();
    s.create_token(new("alice", "ci", 2)).await.unwrap();
    s.create_token(new("bob", "ci", 3)).await.unwrap();
    assert!(matches!(
        s.create_token(new("alice", "ci", 4)).await,
        Err(StorageError::AlreadyExists(_))
    ));
    assert!(
        matches!(
            s.create_token(new("carol", "x", 1)).await,
            Err(StorageError::AlreadyExists(_))
        ),
        "a digest is one token"
    );
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"));
    assert_eq!(who(s, 2).await.as_deref(), Some("alice"));
    assert_eq!(who(s, 3).await.as_deref(), Some("bob"));
    assert_eq!(
        listed(s).await,
        own(&[("alice", "ci", 2), ("alice", "laptop", 1), ("bob", "ci", 3)])
    );
    assert_eq!(s.revoke_token(&p("alice"), &n("ci")).await.unwrap(), 1);
    assert_eq!(who(s, 2).await, None);
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"), "the other stays");
    assert!(matches!(
        s.revoke_token(&p("alice"), &n("ci")).await,
        Err(StorageError::NotFound)
    ));
    s.create_token(new("alice", "ci", 5))
        .await
        .expect("a revoked name can be used again");
}

pub async fn expired_tokens_are_refused(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    let expires = clock.now() + Span::hours(1);
    s.create_token(NewToken {
        expires_at: Some(expires),
        ..new("alice", "short", 1)
    })
    .await
    .unwrap();
    s.create_token(new("alice", "long", 2)).await.unwrap();
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"));
    clock.advance(Duration::from_secs(3600) - Duration::from_micros(1));
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"));
    clock.advance(Duration::from_micros(1));
    assert_eq!(who(s, 1).await, None, "expired at its expiry");
    assert_eq!(who(s, 2).await.as_deref(), Some("alice"));
    let t = s.token(&[1; 32]).await.unwrap().expect("still stored");
    assert_eq!(t.expires_at, Some(expires));
    assert_eq!(listed(s).await.len(), 2, "an expired token is still listed");
}

pub async fn rotation_keeps_the_old_token_for_its_grace(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    s.create_token(new("alice", "ci", 1)).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let rotated_at = clock.now();
    let grace = Duration::from_secs(600);
    let info = s.rotate_token(new("alice", "ci", 2), grace).await.unwrap();
    assert_eq!((info.created_at, info.replaced_at), (rotated_at, None));
    assert_eq!(
        who(s, 1).await.as_deref(),
        Some("alice"),
        "old within grace"
    );
    assert_eq!(who(s, 2).await.as_deref(), Some("alice"));
    let old = s.token(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(old.replaced_at, Some(rotated_at));
    assert_eq!(old.expires_at, Some(rotated_at + Span::seconds(600)));
    assert!(
        matches!(
            s.create_token(new("alice", "ci", 3)).await,
            Err(StorageError::AlreadyExists(_))
        ),
        "the name belongs to the new token"
    );
    // A second rotation within the grace replaces the new one; the first
    // keeps its own end.
    s.rotate_token(new("alice", "ci", 3), grace).await.unwrap();
    assert_eq!(
        listed(s).await,
        own(&[("alice", "ci", 1), ("alice", "ci", 2), ("alice", "ci", 3)])
    );
    clock.advance(Duration::from_secs(600));
    assert_eq!(who(s, 1).await, None, "old after grace");
    assert_eq!(who(s, 2).await, None);
    assert_eq!(who(s, 3).await.as_deref(), Some("alice"));
    assert!(matches!(
        s.rotate_token(new("alice", "other", 4), grace).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.rotate_token(new("bob", "ci", 4), grace).await,
        Err(StorageError::NotFound)
    ));
    // Revoking the name ends every token of it at once.
    assert_eq!(s.revoke_token(&p("alice"), &n("ci")).await.unwrap(), 3);
    assert!(listed(s).await.is_empty());
    // Grace 0: the old token ends at once.
    s.create_token(new("alice", "ci", 5)).await.unwrap();
    s.rotate_token(new("alice", "ci", 6), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(who(s, 5).await, None);
    assert_eq!(who(s, 6).await.as_deref(), Some("alice"));
}

pub async fn a_rotation_never_extends_an_expiry(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    let soon = clock.now() + Span::minutes(5);
    s.create_token(NewToken {
        expires_at: Some(soon),
        ..new("alice", "ci", 1)
    })
    .await
    .unwrap();
    s.rotate_token(new("alice", "ci", 2), Duration::from_secs(86_400))
        .await
        .unwrap();
    let old = s.token(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(old.expires_at, Some(soon));
    clock.advance(Duration::from_secs(300));
    assert_eq!(who(s, 1).await, None);
}

pub async fn last_use_is_noted_in_memory_and_written_later(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    s.create_token(new("alice", "ci", 1)).await.unwrap();
    s.create_token(new("alice", "idle", 2)).await.unwrap();
    let first = clock.now();
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"));
    clock.advance(Duration::from_secs(3));
    let used = clock.now();
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"));
    assert!(first < used);
    let stored = |digest: u8| async move {
        s.tokens()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.digest == [digest; 32])
            .unwrap()
            .last_used_at
    };
    // Within the interval nothing is written on the request's path ...
    assert_eq!(stored(1).await, None, "a request wrote its last use");
    // ... but the listing shows the noted use.
    let by_digest = |tokens: Vec<devops_api::storage::TokenInfo>, d: u8| {
        tokens.into_iter().find(|t| t.digest == [d; 32]).unwrap()
    };
    assert_eq!(
        by_digest(s.list_tokens().await.unwrap(), 1).last_used_at,
        Some(used)
    );
    s.flush_token_uses().await.unwrap();
    assert_eq!(stored(1).await, Some(used));
    assert_eq!(stored(2).await, None, "an unused token has no last use");
    // A use noted with an earlier time never moves it back; uses of a
    // revoked token are dropped.
    s.write_token_uses(vec![([1; 32], first), ([9; 32], used)])
        .await
        .unwrap();
    assert_eq!(stored(1).await, Some(used));
    assert!(s.token(&[9; 32]).await.unwrap().is_none());
    assert!(TOKEN_USE_INTERVAL >= Duration::from_secs(60));
}

pub async fn named_tokens_survive_export_and_import(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    s.create_token(NewToken {
        expires_at: Some(clock.now() + Span::days(30)),
        ..new("alice", "ci", 1)
    })
    .await
    .unwrap();
    s.create_token(new("alice", "laptop", 2)).await.unwrap();
    s.rotate_token(new("alice", "ci", 3), Duration::from_secs(60))
        .await
        .unwrap();
    who(s, 2).await;
    s.flush_token_uses().await.unwrap();
    let export = s.export().await.unwrap();
    assert!(export.unreadable.is_empty());
    let sorted = |mut v: Vec<Record>| {
        v.sort_by_key(|r| format!("{r:?}"));
        v
    };
    let before = sorted(export.records);
    assert_eq!(before.len(), 3);
    assert!(
        before
            .iter()
            .any(|r| matches!(r, Record::Token(t) if t.last_used_at.is_some())),
        "the last use is part of the record"
    );
    let set = ImportSet::validate(before.clone()).unwrap().replacing();
    assert_eq!(s.import(set).await.unwrap(), 3);
    assert_eq!(sorted(s.export().await.unwrap().records), before);
    assert!(
        matches!(
            s.create_token(new("alice", "ci", 4)).await,
            Err(StorageError::AlreadyExists(_))
        ),
        "the current token's name is indexed again"
    );
    assert_eq!(who(s, 1).await.as_deref(), Some("alice"), "in its grace");
    // A set with two current tokens of one name is refused before any write.
    let mut twice = before.clone();
    let Some(Record::Token(mut t)) = twice
        .iter()
        .find(|r| matches!(r, Record::Token(t) if t.replaced_at.is_none()))
        .cloned()
    else {
        panic!("a current token")
    };
    t.digest = [7; 32];
    twice.push(Record::Token(t));
    let err = ImportSet::validate(twice).unwrap_err();
    assert!(err.reason.contains("a second current token"), "{err}");
}

/// What a store created by the release before named tokens holds reads as
/// the token named `default` (each backend's own test opens such a file or
/// schema; here: the name a default token gets).
pub async fn a_token_from_before_names_is_the_default_one(
    store: Arc<dyn Store>,
    _clock: Arc<ManualClock>,
) {
    let s = store.as_ref();
    let digest: TokenDigest = [1; 32];
    s.create_token(NewToken::default_for(p("alice"), digest))
        .await
        .unwrap();
    let t = s.token(&digest).await.unwrap().unwrap();
    assert_eq!(t.name.as_str(), TokenName::DEFAULT);
    assert_eq!(s.revoke_token(&p("alice"), &n("default")).await.unwrap(), 1);
}
