//! Security headers: every answer the server gives — a page, an API answer, a 404 of either
//! kind, a webhook's refusal, the stylesheet — carries the Content-Security-Policy and the other
//! headers that keep the dashboard from being framed, sniffed or leaking its URLs.

use crate::helpers::*;

/// The headers every response must carry, with their exact values.
const EXPECTED: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("echo hi"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    let id = app.trigger("shop", "main").await;
    app.wait_for_build(id).await;

    let gets = [
        ("/", 200, "text/html"),
        ("/repos/shop", 200, "text/html"),
        (&format!("/builds/{id}") as &str, 200, "text/html"),
        ("/api/repos", 200, "application/json"),
        (&format!("/api/builds/{id}/log") as &str, 200, "text/plain"),
        ("/static/gantry.css", 200, "text/css"),
        ("/no/such/page", 404, "text/html"),
        ("/api/builds/999999", 404, "application/json"),
    ];
    let mut responses = Vec::new();
    for (path, status, content_type) in gets {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "GET {path}");
        let served = response.headers()["content-type"].to_str().unwrap();
        assert!(served.starts_with(content_type), "GET {path}: {served}");
        responses.push((format!("GET {path}"), response));
    }
    let refused = app.client.post(app.url("/hooks/shop")).body("{}").send().await.unwrap();
    assert!(refused.status().is_client_error(), "{}", refused.status());
    responses.push(("POST /hooks/shop".to_string(), refused));

    for (what, response) in &responses {
        for (name, value) in EXPECTED {
            let got: Vec<_> = response.headers().get_all(name).iter().collect();
            assert_eq!(got.len(), 1, "{what}: {name} {got:?}");
            assert_eq!(got[0], value, "{what}: {name}");
        }
    }
    app.stop().await;
}
