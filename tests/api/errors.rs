//! Every way a request can be wrong gets a problem document with the right status.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{error_fields, problem, spawn_app};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let r = app
        .req(Method::POST, "/v1/tasks", &app.alice)
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    let body = problem(r, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"));
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    for ct in [
        Some("text/plain"),
        Some("application/merge-patch+json"),
        None,
    ] {
        let mut req = app
            .req(Method::POST, "/v1/tasks", &app.alice)
            .body("{\"title\":\"a\"}");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        problem(req.send().await.unwrap(), 415).await;
    }
    let ok = app
        .req(Method::POST, "/v1/tasks", &app.alice)
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"title\":\"a\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201, "parameters on the media type are fine");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let app = spawn_app().await;
    let r = app.get_public("/nope").await;
    problem(r, 404).await;
    let r = app.client.delete(app.url("/health")).send().await.unwrap();
    problem(r, 405).await;
    let r = app
        .req(Method::PUT, "/v1/tasks", &app.alice)
        .send()
        .await
        .unwrap();
    problem(r, 405).await;
}

#[tokio::test]
async fn malformed_id_is_400_and_unknown_id_is_404() {
    let app = spawn_app().await;
    let body = problem(app.get(&app.alice, "not-a-uuid").await, 400).await;
    assert_eq!(error_fields(&body), ["id"]);
    // A UUID of another version is well formed but cannot name a task.
    problem(
        app.get(&app.alice, "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
            .await,
        404,
    )
    .await;
    problem(
        app.get(&app.alice, &uuid::Uuid::now_v7().to_string()).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn validation_is_422_listing_every_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), vec!["title"]),
        (json!({"title": "   "}), vec!["title"]),
        (json!({"title": "x".repeat(201)}), vec!["title"]),
        (json!({"title": "a\u{0007}"}), vec!["title"]),
        (
            json!({"title": "a", "description": "d".repeat(10_001)}),
            vec!["description"],
        ),
        (
            json!({"title": "a", "status": "later", "priority": "urgent"}),
            vec!["priority", "status"],
        ),
        (json!({"title": "a", "due_at": "next week"}), vec!["due_at"]),
        (json!({"title": "a", "tags": ["x", "x"]}), vec!["tags"]),
        (
            json!({"title": "a", "tags": (0..21).map(|i| i.to_string()).collect::<Vec<_>>()}),
            vec!["tags"],
        ),
        (json!({"title": "a", "tags": [""]}), vec!["tags[0]"]),
        (json!({"title": "a", "tags": "x"}), vec!["tags"]),
        (
            json!({"title": "a", "id": "mine", "version": 3}),
            vec!["id", "version"],
        ),
        (json!(["title"]), vec![""]),
    ];
    for (body, fields) in cases {
        let got = problem(app.create(&app.alice, body.clone()).await, 422).await;
        assert_eq!(error_fields(&got), fields, "{body}");
        for e in got["errors"].as_array().unwrap() {
            assert!(!e["message"].as_str().unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn_app().await;
    let big = json!({"title": "a", "description": "x".repeat(70 * 1024)});
    problem(app.create(&app.alice, big).await, 413).await;
}

#[tokio::test]
async fn errors_leak_no_internals() {
    let app = spawn_app().await;
    let r = app
        .req(Method::POST, "/v1/tasks", &app.alice)
        .header("content-type", "application/json")
        .body("{\"title\": 1e999999}")
        .send()
        .await
        .unwrap();
    let body = problem(r, 400).await.to_string();
    for leak in ["src/", "panicked", "redb", "serde"] {
        assert!(!body.contains(leak), "{body}");
    }
}

/// Raw HTTP/1.1 so the client library's own limits do not interfere.
async fn raw_status_line(addr: std::net::SocketAddr, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&request).await;
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn oversized_uri_and_headers_are_refused() {
    let app = spawn_app().await;
    // The request head, URI included, is limited to 16 KiB.
    let mut uri = b"GET /health?".to_vec();
    uri.extend(std::iter::repeat_n(b'a', 17 * 1024));
    uri.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        raw_status_line(app.addr, uri).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let mut headers = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        headers.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
    }
    headers.extend_from_slice(b"\r\n");
    assert_eq!(
        raw_status_line(app.addr, headers).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

/// Values that could be stored but not read back, listed or restored
/// unchanged, and characters that make displayed text differ from stored
/// text, are refused with 422 naming the field.
#[tokio::test]
async fn unstorable_and_deceptive_values_are_refused() {
    let app = crate::helpers::spawn_app().await;
    let cases = [
        (
            json!({"title": "9999-12-31 minus a day", "due_at": "9999-12-31T23:59:59-23:59"}),
            "due_at",
        ),
        (
            json!({"title": "year -1", "due_at": "0000-01-01T00:00:00+23:59"}),
            "due_at",
        ),
        (
            json!({"title": "space separator", "due_at": "2026-01-31 17:00:00Z"}),
            "due_at",
        ),
        (json!({"title": "evil\u{202e}txt.exe"}), "title"),
        (json!({"title": "zero\u{200b}width"}), "title"),
        (json!({"title": "line\u{2028}separator"}), "title"),
        (json!({"title": "tag chars \u{e0041}"}), "title"),
        (json!({"title": "t", "tags": [" padded"]}), "tags[0]"),
        (
            json!({"title": "t", "tags": ["ok", "bidi\u{2067}"]}),
            "tags[1]",
        ),
        (
            json!({"title": "t", "description": "override \u{202d} here"}),
            "description",
        ),
        (
            json!({"title": "t", "description": "nul \u{0} here"}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let r = app.create(&app.alice, body.clone()).await;
        let p = problem(r, 422).await;
        assert_eq!(crate::helpers::error_fields(&p), [field], "{body}");
    }
    // Kept: line breaks, tabs, joiners and marks in descriptions, the edges of
    // the range in UTC, and a leap second.
    let t = app
        .create_ok(
            &app.alice,
            json!({"title": "ok", "description": "a\tb\r\nc \u{200d}\u{200f}\u{2028}",
                   "due_at": "9999-12-31T23:59:60.5Z"}),
        )
        .await;
    assert_eq!(t["due_at"], "9999-12-31T23:59:59.999999Z");
    let r = app
        .list(&app.alice, "?due_before=9999-12-31T23:59:59-23:59")
        .await;
    assert_eq!(
        r.status(),
        200,
        "a filter bound may lie outside the stored range"
    );
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}
