//! The interactive docs at `/docs` and the index at `/`, in each access mode.

use devops_api::http::{ApiConfig, DocsAccess};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn index_links_docs_openapi_and_health() {
    let app = spawn_app().await;
    let r = app.get_public("/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.headers().contains_key("content-security-policy"));
    let html = r.text().await.unwrap();
    for link in [
        "href=\"/docs/\"",
        "href=\"/openapi.json\"",
        "href=\"/health\"",
    ] {
        assert!(html.contains(link), "{link} in {html}");
    }
}

#[tokio::test]
async fn docs_are_served_from_the_binary_under_a_same_origin_csp() {
    let app = spawn_app().await;
    let r = app.get_public("/docs").await;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/docs/");
    let r = app.get_public("/docs/").await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui-bundle.js"));
    assert!(
        !html.contains("https://"),
        "no asset from elsewhere: {html}"
    );

    let init = app.get_public("/docs/swagger-initializer.js").await;
    assert_eq!(init.status(), 200);
    let js = init.text().await.unwrap();
    assert!(js.contains("\"url\": \"/openapi.json\""), "{js}");

    let bundle = app.get_public("/docs/swagger-ui-bundle.js").await;
    assert_eq!(bundle.status(), 200);
    assert!(
        bundle.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript"),
        "a script type, or nosniff blocks it"
    );
    assert!(bundle.bytes().await.unwrap().len() > 500_000);
}

#[tokio::test]
async fn docs_behind_the_token() {
    let app = spawn_app_with(ApiConfig {
        docs: DocsAccess::Token,
        ..ApiConfig::default()
    })
    .await;
    let anonymous = app.get_public("/docs/").await;
    assert_eq!(anonymous.status(), 401);
    let r = app
        .client
        .get(app.url("/docs/"))
        .bearer_auth(&app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_public("/openapi.json").await.status(), 200);
    assert_eq!(app.get_public("/").await.status(), 200);
}

#[tokio::test]
async fn docs_off() {
    let app = spawn_app_with(ApiConfig {
        docs: DocsAccess::Off,
        ..ApiConfig::default()
    })
    .await;
    assert_eq!(app.get_public("/docs/").await.status(), 404);
    assert_eq!(app.get_public("/docs/swagger-ui.css").await.status(), 404);
    let html = app.get_public("/").await.text().await.unwrap();
    assert!(!html.contains("/docs/"), "{html}");
    assert!(html.contains("/openapi.json"));
}
