//! The task resource: create, read, list, update, replace, delete.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{error_fields, problem, spawn_app};

#[tokio::test]
async fn create_returns_201_location_etag_and_defaults() {
    let app = spawn_app().await;
    let r = app
        .create(&app.alice, json!({"title": "  Ship it  "}))
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let t: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/v1/tasks/{}", t["id"].as_str().unwrap()));
    assert_eq!(etag, "\"1\"");
    assert_eq!(t["title"], "Ship it");
    assert_eq!(
        (t["status"].as_str(), t["priority"].as_str()),
        (Some("todo"), Some("normal"))
    );
    assert_eq!(t["tags"], json!([]));
    assert_eq!(t["version"], 1);
    assert!(t.get("description").is_none() && t.get("due_at").is_none());
    let id = uuid::Uuid::parse_str(t["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(t["created_at"].as_str().unwrap().ends_with('Z'));
    let got: Value = app
        .get(&app.alice, t["id"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, t);
}

#[tokio::test]
async fn get_honours_if_none_match() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "a"})).await;
    let path = format!("/v1/tasks/{}", t["id"].as_str().unwrap());
    let r = app
        .req(Method::GET, &path, &app.alice)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let r = app
        .req(Method::GET, &path, &app.alice)
        .header("if-none-match", "\"0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn patch_is_a_merge_patch_with_preconditions() {
    let app = spawn_app().await;
    let t = app
        .create_ok(&app.alice, json!({"title": "a", "description": "d", "tags": ["x"], "due_at": "2030-01-01T00:00:00Z"}))
        .await;
    let id = t["id"].as_str().unwrap();
    let r = app
        .patch(
            &app.alice,
            id,
            json!({"status": "done", "description": null}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let t2: Value = r.json().await.unwrap();
    assert_eq!(
        (t2["status"].as_str(), t2["title"].as_str()),
        (Some("done"), Some("a"))
    );
    assert!(t2.get("description").is_none());
    assert_eq!(t2["tags"], json!(["x"]));
    // Stale If-Match: 412; current: 200.
    let path = format!("/v1/tasks/{id}");
    let stale = app
        .req(Method::PATCH, &path, &app.alice)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "b"}))
        .send()
        .await
        .unwrap();
    problem(stale, 412).await;
    let ok = app
        .req(Method::PATCH, &path, &app.alice)
        .header("if-match", "\"2\"")
        .json(&json!({"title": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        200,
        "plain application/json is accepted for PATCH"
    );
    // Unknown field: 422 naming it; removing a required field: 422.
    let body = problem(
        app.patch(&app.alice, id, json!({"colour": "red"})).await,
        422,
    )
    .await;
    assert_eq!(error_fields(&body), ["colour"]);
    let body = problem(app.patch(&app.alice, id, json!({"title": null})).await, 422).await;
    assert_eq!(error_fields(&body), ["title"]);
}

#[tokio::test]
async fn put_replaces_every_mutable_field() {
    let app = spawn_app().await;
    let t = app
        .create_ok(
            &app.alice,
            json!({"title": "a", "description": "d", "priority": "high"}),
        )
        .await;
    let id = t["id"].as_str().unwrap();
    let r = app.put(&app.alice, id, json!({"title": "b"})).await;
    assert_eq!(r.status(), 200);
    let t2: Value = r.json().await.unwrap();
    assert_eq!(
        t2["priority"], "normal",
        "absent fields take their defaults"
    );
    assert!(t2.get("description").is_none());
    assert_eq!(t2["version"], 2);
    assert_eq!(t2["created_at"], t["created_at"]);
    let body = problem(
        app.put(&app.alice, id, json!({"description": "no title"}))
            .await,
        422,
    )
    .await;
    assert_eq!(error_fields(&body), ["title"]);
    let stale = app
        .req(Method::PUT, &format!("/v1/tasks/{id}"), &app.alice)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "c"}))
        .send()
        .await
        .unwrap();
    problem(stale, 412).await;
}

#[tokio::test]
async fn delete_is_204_then_404_and_honours_if_match() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "a"})).await;
    let id = t["id"].as_str().unwrap();
    let path = format!("/v1/tasks/{id}");
    let stale = app
        .req(Method::DELETE, &path, &app.alice)
        .header("if-match", "\"9\"")
        .send()
        .await
        .unwrap();
    problem(stale, 412).await;
    let r = app
        .req(Method::DELETE, &path, &app.alice)
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(app.delete(&app.alice, id).await, 404).await;
    problem(app.get(&app.alice, id).await, 404).await;
}

#[tokio::test]
async fn list_pages_with_cursor_and_filters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..45 {
        let tags = if i % 3 == 0 {
            json!(["three"])
        } else {
            json!([])
        };
        let t = app
            .create_ok(&app.alice, json!({"title": format!("Task {i}"), "tags": tags, "status": if i % 2 == 0 { "done" } else { "todo" }}))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    // Default page size 20, ascending creation order.
    let mut seen = Vec::new();
    let mut query = String::new();
    loop {
        let page: Value = app.list(&app.alice, &query).await.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 20);
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let page: Value = app
        .list(&app.alice, "?order=desc&limit=3")
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [&ids[44], &ids[43], &ids[42]]);
    let page: Value = app
        .list(&app.alice, "?tag=three&status=done&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 8); // i in {0,6,...,42}
    assert!(page["next_cursor"].is_null());
    let page: Value = app
        .list(&app.alice, "?q=TASK%204&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 6); // 4, 40..44
}

#[tokio::test]
async fn list_rejects_bad_parameters_and_tampered_cursors() {
    let app = spawn_app().await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=x", "limit"),
        ("?status=later", "status"),
        ("?priority=urgent", "priority"),
        ("?order=sideways", "order"),
        ("?due_before=tomorrow", "due_before"),
        ("?cursor=AAAA", "cursor"),
        ("?cursor=%%%", "cursor"),
    ] {
        let body = problem(app.list(&app.alice, query).await, 400).await;
        assert_eq!(error_fields(&body), [field], "{query}");
    }
    // A real cursor with one character changed is rejected or still safe; never a 500.
    app.create_ok(&app.alice, json!({"title": "a"})).await;
    app.create_ok(&app.alice, json!({"title": "b"})).await;
    let page: Value = app.list(&app.alice, "?limit=1").await.json().await.unwrap();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    for i in 0..cursor.len() {
        let mut c = cursor.clone().into_bytes();
        c[i] = if c[i] == b'A' { b'B' } else { b'A' };
        let r = app
            .list(
                &app.alice,
                &format!("?cursor={}", String::from_utf8(c).unwrap()),
            )
            .await;
        assert!(r.status() == 200 || r.status() == 400, "{}", r.status());
    }
}

#[tokio::test]
async fn idempotency_key_makes_create_retry_safe() {
    let app = spawn_app().await;
    let send = |body: Value, key: &'static str| {
        app.req(Method::POST, "/v1/tasks", &app.alice)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send(json!({"title": "once"}), "k-1").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // Same body with other formatting and key order: the original response.
    let again = send(json!({"tags": [], "title": "once"}), "k-1")
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    problem(send(json!({"title": "other"}), "k-1").await.unwrap(), 422).await;
    let page: Value = app.list(&app.alice, "").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_conflicting_updates_exactly_one_wins() {
    let app = spawn_app().await;
    let t = app.create_ok(&app.alice, json!({"title": "a"})).await;
    let path = format!("/v1/tasks/{}", t["id"].as_str().unwrap());
    let send = |title: &'static str| {
        app.req(Method::PATCH, &path, &app.alice)
            .header("if-match", "\"1\"")
            .json(&json!({"title": title}))
            .send()
    };
    let (a, b) = tokio::join!(send("A"), send("B"));
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 412]);
}
