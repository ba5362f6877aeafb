//! Authentication, ownership and abuse limits.

use devops_api::http::{ApiConfig, TrustedProxies};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{p, problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn v1_needs_a_valid_bearer_token() {
    let app = spawn_app().await;
    let r = app.get_public("/v1/tasks").await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401).await;
    for header in [
        "Bearer nope",
        "Basic YWxpY2U6eA==",
        "Bearer",
        &format!("Token {}", app.alice),
    ] {
        let r = app
            .client
            .get(app.url("/v1/tasks"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        problem(r, 401).await;
    }
    // Both token sources work: the tokens file (alice) and the database (bob).
    assert_eq!(app.list(&app.alice, "").await.status(), 200);
    assert_eq!(app.list(&app.bob, "").await.status(), 200);
    // /health and /ready need no token.
    assert_eq!(app.get_public("/health").await.status(), 200);
}

#[tokio::test]
async fn revoked_tokens_stop_working() {
    let app = spawn_app().await;
    assert_eq!(app.list(&app.bob, "").await.status(), 200);
    app.store
        .revoke_token(&p("bob"), &devops_api::domain::TokenName::default_name())
        .await
        .unwrap();
    problem(app.list(&app.bob, "").await, 401).await;
}

#[tokio::test]
async fn another_principals_task_is_404_everywhere() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "alice's"})).await;
    let id = t["id"].as_str().unwrap();
    problem(app.get(&app.bob, id).await, 404).await;
    problem(
        app.patch(&app.bob, id, json!({"title": "bob's"})).await,
        404,
    )
    .await;
    problem(app.put(&app.bob, id, json!({"title": "bob's"})).await, 404).await;
    problem(app.delete(&app.bob, id).await, 404).await;
    let page: Value = app.list(&app.bob, "").await.json().await.unwrap();
    assert_eq!(page["items"], json!([]));
    let mine: Value = app.get(&app.alice, id).await.json().await.unwrap();
    assert_eq!(mine, t, "untouched");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(ApiConfig {
        rate_limit: Some(2),
        ..ApiConfig::default()
    })
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let r = app.list(&app.alice, "").await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("limited within 10 requests at 2/s");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry));
    problem(r, 429).await;
    assert_eq!(
        app.list(&app.bob, "").await.status(),
        200,
        "limits are per principal"
    );
}

#[tokio::test]
async fn task_quota_per_principal() {
    let app = spawn_app_with(ApiConfig {
        max_tasks_per_principal: 2,
        ..ApiConfig::default()
    })
    .await;
    app.create_ok(&app.alice, json!({"title": "1"})).await;
    app.create_ok(&app.alice, json!({"title": "2"})).await;
    let body = problem(app.create(&app.alice, json!({"title": "3"})).await, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("at most 2"));
    app.create_ok(&app.bob, json!({"title": "bob's first"}))
        .await;
}

#[tokio::test]
async fn cors_denies_by_default_and_allows_listed_origins() {
    let app = spawn_app().await;
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/v1/tasks"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let allowed = "https://app.example";
    let app = spawn_app_with(ApiConfig {
        cors_origins: vec![allowed.parse().unwrap()],
        ..ApiConfig::default()
    })
    .await;
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/v1/tasks"))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], allowed);
}

#[tokio::test]
async fn responses_carry_security_headers() {
    let app = spawn_app().await;
    let r = app.list(&app.alice, "").await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

/// `n` requests to `/v1/tasks` with a bad token, optionally with an
/// `X-Forwarded-For`; their statuses.
async fn bad_tokens(app: &crate::helpers::TestApp, n: usize, forwarded: Option<&str>) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut r = app.req(Method::GET, "/v1/tasks", &format!("dapi_wrong_{i}"));
        if let Some(f) = forwarded {
            r = r.header("x-forwarded-for", f);
        }
        out.push(r.send().await.unwrap().status().as_u16());
    }
    out
}

#[tokio::test]
async fn failed_authentications_are_limited_per_client_address() {
    let app = spawn_app_with(ApiConfig {
        auth_failure_limit: Some(5),
        ..ApiConfig::default()
    })
    .await;
    assert_eq!(bad_tokens(&app, 5, None).await, [401; 5]);
    let r = app
        .req(Method::GET, "/v1/tasks", "dapi_wrong")
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=12).contains(&retry),
        "one failure regained every 12 s: {retry}"
    );
    problem(r, 429).await;
    // The address is refused whatever its token, until the budget refills:
    // answering good tokens would let it keep testing tokens.
    assert_eq!(app.list(&app.alice, "").await.status(), 429);
    // Routes without authentication are not affected.
    assert_eq!(app.get_public("/health").await.status(), 200);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // No trusted proxy: a forged X-Forwarded-For gives no fresh budget.
    let app = spawn_app_with(ApiConfig {
        auth_failure_limit: Some(3),
        ..ApiConfig::default()
    })
    .await;
    for (i, expected) in [401, 401, 401, 429, 429].into_iter().enumerate() {
        let forged = format!("203.0.113.{i}");
        assert_eq!(bad_tokens(&app, 1, Some(&forged)).await, [expected]);
    }
    // The peer (loopback) is a trusted proxy: each forwarded client has its own budget.
    let app = spawn_app_with(ApiConfig {
        auth_failure_limit: Some(3),
        trusted_proxies: TrustedProxies::parse(&["127.0.0.1/32"]).unwrap(),
        ..ApiConfig::default()
    })
    .await;
    let attacker = Some("198.51.100.7, 203.0.113.1");
    assert_eq!(bad_tokens(&app, 4, attacker).await, [401, 401, 401, 429]);
    assert_eq!(bad_tokens(&app, 1, Some("203.0.113.2")).await, [401]);
    let r = app
        .req(Method::GET, "/v1/tasks", &app.alice)
        .header("x-forwarded-for", "203.0.113.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The proxy itself (no header) is another client.
    assert_eq!(app.list(&app.alice, "").await.status(), 200);
}

/// A stored token for a principal of the tokens file would let two token
/// holders share one principal's tasks: it is not honoured.
#[tokio::test]
async fn a_stored_token_for_a_tokens_file_principal_is_refused() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "alice's"})).await;
    let second = devops_api::auth::generate_token();
    app.store
        .create_token(devops_api::storage::NewToken::default_for(
            p("alice"),
            devops_api::auth::digest(&second),
        ))
        .await
        .unwrap();
    problem(app.list(&second, "").await, 401).await;
    problem(app.get(&second, t["id"].as_str().unwrap()).await, 401).await;
    assert_eq!(app.list(&app.alice, "").await.status(), 200);
}
