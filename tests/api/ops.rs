//! Health, readiness, metrics, request ids and the OpenAPI document.

use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn health_is_the_documented_body() {
    let app = spawn_app().await;
    let r = app.get_public("/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "healthy"})
    );
}

#[tokio::test]
async fn ready_fails_while_draining_and_when_storage_is_closed() {
    let app = spawn_app().await;
    assert_eq!(app.get_public("/ready").await.status(), 200);
    app.lifecycle.start_draining();
    let r = app.get_public("/ready").await;
    assert_eq!(
        r.headers()["connection"],
        "close",
        "draining responses close the connection"
    );
    problem(r, 503).await;
    // Liveness is unaffected.
    assert_eq!(app.get_public("/health").await.status(), 200);

    let app = crate::helpers::spawn_app().await;
    app.store.close().await;
    problem(app.get_public("/ready").await, 503).await;
    // Static tokens still authenticate; writes to the closed store are 503, not 500.
    problem(app.create(&app.alice, json!({"title": "late"})).await, 503).await;
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.get_public("/health").await;
    assert_eq!(r.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn metrics_label_routes_by_template() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "a"})).await;
    app.get(&app.alice, t["id"].as_str().unwrap()).await;
    app.get_public("/random/scan/path").await;
    let text = app.get_public("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"route="/v1/tasks/{id}""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(
        !text.contains("/random/scan/path"),
        "raw paths never become labels"
    );
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "tasks_total",
        "build_info",
        "store_commit_seconds",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_unchanged() {
    let app = spawn_app().await;
    let r = app.get_public("/openapi.json").await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<_> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    for p in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/v1/tasks",
        "/v1/tasks/{id}",
    ] {
        assert!(paths.contains(&p.to_owned()), "{p} documented");
    }
    let ops = &doc["paths"]["/v1/tasks/{id}"];
    for m in ["get", "put", "patch", "delete"] {
        assert!(ops[m].is_object(), "{m} documented");
        assert!(ops[m]["responses"]["401"].is_object() && ops[m]["responses"]["404"].is_object());
    }
    // Reviewed on change: `cargo insta review` after an intended change.
    insta::assert_snapshot!("openapi", devops_api::http::openapi::document_json());
}

#[tokio::test]
async fn shutdown_finishes_and_closes_the_listener() {
    let app = spawn_app().await;
    let url = app.url("/health");
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    app.shutdown().await;
    let err = reqwest::Client::new().get(&url).send().await;
    assert!(err.is_err(), "nothing listens after shutdown");
}
