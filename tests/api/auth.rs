//! Authentication, ownership and abuse limits.

use devops_api::http::ApiConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app, spawn_app_with};

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
    app.store.revoke_token("bob").await.unwrap();
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
