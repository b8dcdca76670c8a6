//! The calls the end-to-end suite and the build benchmark both make to a running Gantry: queue a
//! build through the API, deliver a webhook, sign a body as GitHub and Gitea do. Included by path
//! from `tests/e2e/main.rs` and `tests/bench/builds.rs`, so both speak to the server the same way.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A Gantry server's base URL and an HTTP client for it.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Queue a manual build of `branch` of `repo` and return its id.
    pub async fn trigger(&self, repo: &str, branch: &str) -> i64 {
        let response = self
            .http
            .post(self.url(&format!("/api/repos/{repo}/builds")))
            .json(&json!({ "branch": branch }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["build"].as_i64().unwrap()
    }

    /// Deliver a webhook to `repo` with `headers`; the answer's status and body (JSON when it is).
    pub async fn deliver(&self, repo: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        let mut request =
            self.http.post(self.url(&format!("/hooks/{repo}"))).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// HMAC-SHA256 of `body` under `secret`, in hex: Gitea's and Forgejo's signature, and GitHub's
/// after `sha256=`.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The headers GitHub sends with a delivery of `event`, signed with `secret`.
pub fn github_headers(secret: &str, event: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(secret, body))),
    ]
}
