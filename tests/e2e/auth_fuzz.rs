//! A few thousand generated requests to the sign-in form, the token pages and the API, with bad,
//! odd and random credentials, cookies, CSRF tokens, origins, content types and bodies: the
//! server never answers 5xx and keeps serving. The generator is seeded, so a failure repeats.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;

use crate::auth::Browser;
use crate::helpers::*;

/// Requests sent.
const REQUESTS: usize = 3000;

/// The generator's seed; change it to explore, keep it to repeat.
const SEED: u64 = 0x6a09_e667_f3bc_c908;

/// xorshift64*: small, fast, and enough to vary requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// Bytes of any value, fewer than `max` of them.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Text that is sometimes plausible, sometimes hostile, sometimes long.
    fn text(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => "a".repeat(self.below(3000)),
            2 => String::from_utf8_lossy(&self.bytes(64)).into_owned(),
            3 => self
                .pick(&["admin", "fuzz", "ADMIN", "admin ", "ad\0min", "<script>", "../etc/passwd", "é", "%00"])
                .into(),
            4 => format!("gantry_{}", "A".repeat(43)),
            5 => self.pick(&["", " ", "\r\n", "'; DROP TABLE users; --", "null", "{}", "[]", "%"]).into(),
            _ => (0..self.below(40)).map(|_| (b'!' + self.below(94) as u8) as char).collect(),
        }
    }
}

/// A header value made of random visible bytes (or a plausible one).
fn header_value(rng: &mut Rng, plausible: &[&str]) -> Option<HeaderValue> {
    if rng.chance(50) {
        return HeaderValue::from_str(rng.pick(plausible)).ok();
    }
    let len = rng.below(200);
    let bytes: Vec<u8> = (0..len).map(|_| (0x20 + rng.below(0xdf) as u8).max(0x20)).filter(|&b| b != 0x7f).collect();
    HeaderValue::from_bytes(&bytes).ok()
}

#[tokio::test]
async fn generated_requests_with_bad_credentials_never_get_a_5xx() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    // A real signed-in session (of a member of its own, so what it may legitimately change, such
    // as its own tokens, leaves the admin's alone) and a real sign-in form's session, so some
    // requests get past CSRF.
    add_user_with_token(app.database(), "fuzz", gantry::store::Role::Member, "fuzz-password").await;
    let signed_in = Browser::signed_in(&app, "fuzz", "fuzz-password").await;
    let mut form = Browser::new(&app);
    form.open_login().await;
    let cookies = [
        format!("gantry_session={}", signed_in.cookie.clone().unwrap()),
        format!("gantry_session={}", form.cookie.clone().unwrap()),
        "gantry_session=AAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "gantry_session=".to_string(),
        "gantry_session=%%%; gantry_session=x".to_string(),
        format!("other=1; gantry_session={}", "B".repeat(22)),
    ];
    let csrfs = [signed_in.csrf.clone(), form.csrf.clone(), "x".to_string(), String::new()];
    let http = anonymous_client();
    let mut rng = Rng(SEED);
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();

    for i in 0..REQUESTS {
        let id = rng.pick(&["1", "0", "-1", "999999999999999999999", "abc", "%2e%2e", "1.5"]).to_string();
        let (method, path) = match rng.below(7) {
            0 | 1 => (Method::POST, "/login".to_string()),
            2 => (Method::POST, "/settings/tokens".to_string()),
            3 => (Method::POST, format!("/settings/tokens/{id}/revoke")),
            4 => (Method::POST, "/api/repos/shop/builds".to_string()),
            5 => (Method::POST, format!("/api/builds/{id}/cancel")),
            _ => (rng.pick(&["GET", "GET", "PUT", "DELETE", "PATCH"]).parse().unwrap(), format!("/api/builds/{id}")),
        };
        let query = match rng.below(10) {
            0 => format!("?token={}", rng.text()),
            1 => format!("?next={}", rng.text()),
            _ => String::new(),
        };
        let url = app.url(&format!("{path}{query}")).replace(' ', "%20");
        let Ok(url) = reqwest::Url::parse(&url) else { continue };
        let mut request = http.request(method.clone(), url);
        // Never a valid API token: what is tried here is everything else.
        if rng.chance(40) {
            let plausible =
                ["Bearer gantry_unknownunknownunknownunknownunknownunkn", "Bearer", "Basic YTpi", "bearer  x"];
            if let Some(value) = header_value(&mut rng, &plausible) {
                request = request.header("authorization", value);
            }
        }
        if rng.chance(60) {
            request = request.header("cookie", &cookies[rng.below(cookies.len())]);
        }
        let csrf = csrfs[rng.below(csrfs.len())].clone();
        if rng.chance(20) {
            request = request.header("x-csrf-token", &csrf);
        }
        if rng.chance(20) {
            let own = format!("http://{}", app.address);
            if let Some(origin) = header_value(&mut rng, &[&own, "http://evil.example", "null"]) {
                request = request.header("origin", origin);
            }
        }
        if rng.chance(10) {
            request = request.header(
                HeaderName::from_static("sec-fetch-site"),
                rng.pick(&["cross-site", "same-origin", "none", "??"]),
            );
        }
        request = match rng.below(5) {
            0 => request.header("content-type", "application/x-www-form-urlencoded").body(rng.bytes(2048)),
            1 | 2 => {
                let mut fields: Vec<(String, String)> = Vec::new();
                for name in ["user", "password", "next", "label"] {
                    if rng.chance(80) {
                        fields.push((name.to_string(), rng.text()));
                    }
                }
                if rng.chance(80) {
                    fields.push(("csrf".to_string(), csrf.clone()));
                }
                if rng.chance(10) {
                    fields.push((rng.text(), rng.text()));
                }
                request.form(&fields)
            }
            3 => request
                .header(
                    "content-type",
                    rng.pick(&["application/json", "text/plain", "multipart/form-data; boundary=x", ""]),
                )
                .body(rng.bytes(512)),
            _ => request.json(&serde_json::json!({ "branch": rng.text(), "commit": rng.text() })),
        };
        let response = request.send().await.unwrap_or_else(|e| panic!("request {i} ({method} {path}) failed: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(status < 500, "request {i} ({method} {path}{query}) got {status}: {body}\n(seed {SEED:#x})");
        *answers.entry(status).or_default() += 1;
    }
    eprintln!("answers to {REQUESTS} generated requests: {answers:?}");
    assert!(answers.len() >= 5, "the requests were too alike to test much: {answers:?}");

    // The server still serves; this address failed so often that its sign-ins are refused for a
    // while, the right password included.
    assert_eq!(app.get_text("/api/repos").await.0, 200);
    let mut browser = Browser::new(&app);
    let answer = browser.sign_in(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
    app.stop().await;
}
