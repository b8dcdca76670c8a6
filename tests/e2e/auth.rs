//! Who may do what, end to end: tokens and roles on the API, the sign-in form and its session
//! cookie, CSRF on every form, and every kind of bad credential answered with a clear 4xx.

use std::time::{Duration, Instant};

use gantry::store::Role;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A form's fields.
type Form<'a> = &'a [(&'a str, &'a str)];

/// How long a request without credentials may take to be refused while its body never comes.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// A browser's view of one server: its session cookie (set by hand, so each test sees exactly
/// what the server sent) and the CSRF token of the last form it loaded.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
    pub csrf: String,
}

/// The value of the `gantry_session` cookie a response sets ("" when it removes it), with the
/// whole `Set-Cookie` line.
fn session_cookie(headers: &HeaderMap) -> Option<(String, String)> {
    headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        let value = line.strip_prefix("gantry_session=")?.split(';').next()?.to_string();
        Some((value, line.to_string()))
    })
}

/// The hidden `csrf` field's value in a page.
fn csrf_in(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).unwrap_or_else(|| panic!("no csrf field in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser { http: anonymous_client(), base: format!("http://{}", app.address), cookie: None, csrf: String::new() }
    }

    pub async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, format!("gantry_session={cookie}"));
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.unwrap();
        if let Some((value, _)) = session_cookie(response.headers()) {
            self.cookie = (!value.is_empty()).then_some(value);
        }
        response
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let response = self.send(Method::GET, path, None).await;
        (response.status(), response.text().await.unwrap())
    }

    /// Load the sign-in form (a session and its CSRF token come with it).
    pub async fn open_login(&mut self) {
        let (status, html) = self.get("/login").await;
        assert_eq!(status, 200, "{html}");
        self.csrf = csrf_in(&html);
    }

    /// Submit the sign-in form; the answer.
    pub async fn sign_in(&mut self, user: &str, password: &str) -> reqwest::Response {
        self.open_login().await;
        let csrf = self.csrf.clone();
        self.send(Method::POST, "/login", Some(&[("csrf", &csrf), ("user", user), ("password", password)])).await
    }

    /// Sign in and load the tokens page, whose forms carry the signed-in session's CSRF token.
    pub async fn signed_in(app: &TestApp, user: &str, password: &str) -> Browser {
        let mut browser = Browser::new(app);
        let response = browser.sign_in(user, password).await;
        assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
        let (status, html) = browser.get("/settings/tokens").await;
        assert_eq!(status, 200, "{html}");
        browser.csrf = csrf_in(&html);
        browser
    }
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// Every state-changing endpoint, as (method, path).
fn state_changing(build: i64) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/api/repos/shop/builds".to_string()),
        (Method::POST, format!("/api/builds/{build}/cancel")),
        (Method::POST, "/settings/tokens".to_string()),
        (Method::POST, "/settings/tokens/1/revoke".to_string()),
        (Method::POST, "/logout".to_string()),
    ]
}

async fn shop() -> (TestRepo, TestApp) {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("sleep 30"))]);
    let app = spawn_app(&[RepoConfig::new("shop", &repo)]).await;
    (repo, app)
}

#[tokio::test]
async fn without_credentials_nothing_changes_and_reads_are_refused() {
    let (repo, app) = shop().await;
    let build = app.trigger("shop", "main").await;
    let anonymous = anonymous_client();
    for (method, path) in state_changing(build) {
        let response = anonymous.request(method.clone(), app.url(&path)).json(&json!({"branch": "main"})).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
        if path.starts_with("/api/") {
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer", "{path}");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
        }
    }
    assert_eq!(app.builds("shop").await.len(), 1, "no build was queued");
    assert!(!is_final(&app.build(build).await["status"]), "nothing was cancelled");

    for path in ["/api/repos", "/api/repos/shop/builds", &format!("/api/builds/{build}"), "/api/builds/1/log"] {
        let response = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    }
    for (path, next) in [("/", "%2F"), ("/repos/shop", "%2Frepos%2Fshop"), ("/builds/1?x=1", "%2Fbuilds%2F1%3Fx%3D1")] {
        let response = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()[LOCATION], format!("/login?next={next}").as_str());
    }
    for public in ["/login", "/static/gantry.css"] {
        assert_eq!(status_of(anonymous.get(app.url(public))).await, 200, "{public}");
    }
    // The webhook still answers its signature alone.
    let sha = repo.commit("main", &[("README", "webhooks need no user")]);
    let (status, body) = app.github_push("shop", "refs/heads/main", &sha).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_post_without_credentials_is_refused_before_its_body_arrives() {
    let (_repo, app) = shop().await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /api/repos/shop/builds HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000000\r\n\r\n{{\"branch\": \"ma",
        app.address
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(REFUSAL_DEADLINE, stream.read(&mut answer))
        .await
        .expect("the server waited for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(start.elapsed() < REFUSAL_DEADLINE);
    app.stop().await;
}

#[tokio::test]
async fn roles_decide_who_may_change_what() {
    let (_repo, app) = shop().await;
    let reader = client_with_token(&add_user_with_token(app.database(), "reader", Role::ReadOnly, "pw-reader").await);
    let dev = client_with_token(&add_user_with_token(app.database(), "dev", Role::Member, "pw-dev").await);

    let queue =
        |client: &reqwest::Client| client.post(app.url("/api/repos/shop/builds")).json(&json!({"branch": "main"}));
    let response = queue(&reader).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(status_of(reader.get(app.url("/api/repos/shop/builds"))).await, 200, "a reader reads");
    assert_eq!(status_of(reader.get(app.url("/repos/shop"))).await, 200, "pages too");
    assert!(app.builds("shop").await.is_empty());

    let response = queue(&dev).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["build"].as_i64().unwrap();
    let cancel = format!("/api/builds/{id}/cancel");
    assert_eq!(status_of(reader.post(app.url(&cancel))).await, 403);
    assert!([200, 202].contains(&status_of(dev.post(app.url(&cancel))).await));

    assert_eq!(status_of(dev.get(app.url("/api/users"))).await, 403, "only admins list users");
    let users = app.get_json("/api/users").await;
    let roles: Vec<(&str, &str)> =
        users.as_array().unwrap().iter().map(|u| (u["name"].as_str().unwrap(), u["role"].as_str().unwrap())).collect();
    assert_eq!(roles, [("admin", "admin"), ("dev", "member"), ("reader", "read_only")]);
    assert!(!users.to_string().contains("argon2"), "no hash leaves the server");
    app.stop().await;
}

#[tokio::test]
async fn public_read_opens_reads_only() {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline("true"))]);
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, "", "\n[auth]\npublic_read = true\n").await;
    let anonymous = anonymous_client();
    assert_eq!(status_of(anonymous.get(app.url("/api/repos"))).await, 200);
    let home = anonymous.get(app.url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains(r#"<a href="/login">Sign in</a>"#));
    let queue = anonymous.post(app.url("/api/repos/shop/builds")).json(&json!({"branch": "main"}));
    assert_eq!(status_of(queue).await, 401, "changing still needs credentials");
    assert_eq!(status_of(anonymous.get(app.url("/settings/tokens"))).await, 303, "settings are somebody's");
    assert_eq!(status_of(anonymous.get(app.url("/api/repos")).header("authorization", "Bearer nope")).await, 401);
    app.stop().await;
}

#[tokio::test]
async fn tokens_belong_in_the_authorization_header_and_die_when_revoked() {
    let (_repo, app) = shop().await;
    let anonymous = anonymous_client();
    for query in ["access_token", "token", "private_token", "Token"] {
        let response = anonymous.get(app.url(&format!("/api/repos?{query}={}", app.token))).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Authorization header"), "{body}");
    }
    let with_header_too = app.client.get(app.url("/?token=x")).send().await.unwrap();
    assert_eq!(with_header_too.status(), 400, "refused before anything else");
    assert!(with_header_too.text().await.unwrap().contains("Authorization header"), "a page says so too");

    for bad in ["Bearer gantry_unknown", "Basic YWRtaW46cHc=", "Bearer", &format!("Bearer {}x", app.token)] {
        let response = anonymous.get(app.url("/api/repos")).header("authorization", bad).send().await.unwrap();
        assert_eq!(response.status(), 401, "{bad}");
        let page = anonymous.get(app.url("/")).header("authorization", bad).send().await.unwrap();
        assert_eq!(page.status(), 401, "a page with a bad token: {bad}");
    }
    // A token works on pages too, and shows whose it is.
    let page = app.client.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(">admin</a>") && !page.contains("/logout"), "no session to sign out of");

    // Revoked through the settings page: the next request with it is refused.
    let second = add_user_with_token(app.database(), "dev", Role::Member, "pw-dev").await;
    let mut browser = Browser::signed_in(&app, "dev", "pw-dev").await;
    let (_, html) = browser.get("/settings/tokens").await;
    let id = html.split("/settings/tokens/").nth(1).unwrap().split('/').next().unwrap().to_string();
    let csrf = browser.csrf.clone();
    let revoke = browser.send(Method::POST, &format!("/settings/tokens/{id}/revoke"), Some(&[("csrf", &csrf)])).await;
    assert_eq!(revoke.status(), 303);
    assert_eq!(status_of(client_with_token(&second).get(app.url("/api/repos"))).await, 401);
    assert_eq!(status_of(app.client.get(app.url("/api/repos"))).await, 200, "other tokens still work");
    let again = browser.send(Method::POST, &format!("/settings/tokens/{id}/revoke"), Some(&[("csrf", &csrf)])).await;
    assert_eq!(again.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn signing_in_cycles_the_session_and_signing_out_ends_it() {
    let (_repo, app) = shop().await;
    let mut browser = Browser::new(&app);
    let login = browser.send(Method::GET, "/login?next=/repos/shop", None).await;
    let (anonymous_id, line) = session_cookie(login.headers()).expect("the form comes with a session");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(!line.contains("Secure"), "plain http: {line}");
    let html = login.text().await.unwrap();
    assert!(html.contains(r#"name="next" value="/repos/shop""#), "{html}");
    browser.csrf = csrf_in(&html);

    let csrf = browser.csrf.clone();
    let attempt = |user: &'static str, password: &'static str| {
        let form = [("csrf", csrf.clone()), ("user", user.to_string()), ("password", password.to_string())];
        let http = browser.http.clone();
        let url = format!("{}/login", browser.base);
        let cookie = format!("gantry_session={anonymous_id}");
        async move { http.post(url).header(COOKIE, cookie).form(&form).send().await.unwrap() }
    };
    let wrong = attempt(ADMIN, "not the password").await;
    assert_eq!(wrong.status(), 401);
    let wrong = wrong.text().await.unwrap();
    let unknown = attempt("nobody", "not the password").await;
    assert_eq!(unknown.status(), 401);
    let unknown = unknown.text().await.unwrap();
    assert!(wrong.contains("wrong user name or password") && unknown.contains("wrong user name or password"));
    let same = wrong.replace(r#"value="admin""#, r#"value="nobody""#);
    assert_eq!(same, unknown, "an unknown user reads exactly like a wrong password");

    let response = browser
        .send(
            Method::POST,
            "/login",
            Some(&[("csrf", &csrf), ("user", ADMIN), ("password", ADMIN_PASSWORD), ("next", "/repos/shop")]),
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/repos/shop");
    let signed_in = browser.cookie.clone().unwrap();
    assert_ne!(signed_in, anonymous_id, "signing in gives the session a new id");
    let (status, html) = browser.get("/repos/shop").await;
    assert_eq!(status, 200);
    assert!(html.contains("signed in as <a href=\"/settings/tokens\""), "{html}");
    let logout_csrf = csrf_in(&html);

    // The id from before signing in is worth nothing now.
    let planted = anonymous_client().get(app.url("/")).header(COOKIE, format!("gantry_session={anonymous_id}"));
    assert_eq!(status_of(planted).await, 303);

    // Somewhere else to go after signing in is not followed.
    let mut other = Browser::new(&app);
    other.open_login().await;
    let csrf = other.csrf.clone();
    let form = [("csrf", csrf.as_str()), ("user", ADMIN), ("password", ADMIN_PASSWORD), ("next", "//evil.example/")];
    let response = other.send(Method::POST, "/login", Some(&form)).await;
    assert_eq!(response.headers()[LOCATION], "/");

    let response = browser.send(Method::POST, "/logout", Some(&[("csrf", &logout_csrf)])).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/login");
    let (removed, line) = session_cookie(response.headers()).expect("the cookie is removed");
    assert!(removed.is_empty() && line.contains("Max-Age=0"), "{line}");
    let replayed = anonymous_client().get(app.url("/api/repos")).header(COOKIE, format!("gantry_session={signed_in}"));
    assert_eq!(status_of(replayed).await, 401, "the session is gone from the server, not just the browser");
    app.stop().await;
}

#[tokio::test]
async fn every_form_needs_its_csrf_token_and_cross_site_posts_are_refused() {
    let (_repo, app) = shop().await;
    let mut browser = Browser::signed_in(&app, ADMIN, ADMIN_PASSWORD).await;
    let csrf = browser.csrf.clone();
    let tokens_before = browser.get("/settings/tokens").await.1.matches("/revoke").count();

    for form in [vec![("label", "x")], vec![("label", "x"), ("csrf", "wrong")], vec![("label", "x"), ("csrf", "")]] {
        let response = browser.send(Method::POST, "/settings/tokens", Some(&form)).await;
        assert_eq!(response.status(), 403, "{form:?}");
        assert!(response.text().await.unwrap().contains("security token is missing or out of date"));
    }
    let cookie = format!("gantry_session={}", browser.cookie.clone().unwrap());
    let url = app.url("/settings/tokens");
    let anonymous = anonymous_client();
    let cross = |origin: &'static str| {
        anonymous.post(&url).header(COOKIE, &cookie).header("origin", origin).form(&[("label", "x"), ("csrf", &csrf)])
    };
    assert_eq!(status_of(cross("http://evil.example")).await, 403, "a form posted from another site");
    assert_eq!(status_of(cross("null")).await, 403);
    let fetch_metadata =
        anonymous.post(&url).header(COOKIE, &cookie).header("sec-fetch-site", "cross-site").form(&[("csrf", &csrf)]);
    assert_eq!(status_of(fetch_metadata).await, 403);
    assert_eq!(browser.get("/settings/tokens").await.1.matches("/revoke").count(), tokens_before, "nothing created");

    // The same forms with the token (and this server's own origin) work.
    let own = anonymous
        .post(&url)
        .header(COOKIE, &cookie)
        .header("origin", format!("http://{}", app.address))
        .form(&[("label", "deploy <script>"), ("csrf", &csrf)]);
    let response = own.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    let token = html.split("<pre class=\"token\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert!(token.starts_with("gantry_") && token.len() == 50, "{token}");
    assert!(shows_escaped(&html, "deploy <script>"));
    assert_eq!(status_of(client_with_token(&token).get(app.url("/api/repos"))).await, 200, "the new token works");
    assert!(!browser.get("/settings/tokens").await.1.contains(&token), "a token is shown once");

    // A script with the session cookie sends the token as a header.
    let queue = |csrf: Option<&str>| {
        let mut request =
            anonymous.post(app.url("/api/repos/shop/builds")).header(COOKIE, &cookie).json(&json!({"branch": "main"}));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request
    };
    assert_eq!(status_of(queue(None)).await, 403);
    assert_eq!(status_of(queue(Some("wrong"))).await, 403);
    assert_eq!(status_of(queue(Some(&csrf))).await, 202);

    // The sign-in form itself: without the session GET /login made, or with another token.
    let bare = anonymous.post(app.url("/login")).form(&[("user", ADMIN), ("password", ADMIN_PASSWORD)]);
    assert_eq!(status_of(bare).await, 403);
    let mut fresh = Browser::new(&app);
    fresh.open_login().await;
    let form = [("csrf", "forged"), ("user", ADMIN), ("password", ADMIN_PASSWORD)];
    assert_eq!(fresh.send(Method::POST, "/login", Some(&form)).await.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn bad_sign_in_input_and_forged_cookies_get_clear_4xx_answers() {
    let (_repo, app) = shop().await;
    let mut browser = Browser::new(&app);
    browser.open_login().await;
    let csrf = browser.csrf.clone();
    let long_name = "a".repeat(65);
    let long_password = "p".repeat(1025);
    let cases: [(Form, u16, &str); 5] = [
        (&[("user", &long_name), ("password", "x")], 400, "at most 64 characters"),
        (&[("user", ADMIN), ("password", &long_password)], 400, "at most 1024 bytes"),
        (&[("user", ADMIN), ("password", "")], 400, "password is empty"),
        (&[("user", "a b"), ("password", "x")], 400, "may only contain"),
        (&[("user", ADMIN)], 400, "incomplete"),
    ];
    for (fields, status, message) in cases {
        let mut form = fields.to_vec();
        form.push(("csrf", &csrf));
        let response = browser.send(Method::POST, "/login", Some(&form)).await;
        assert_eq!(response.status().as_u16(), status, "{message}");
        assert!(response.text().await.unwrap().contains(message), "{message}");
    }
    let huge = browser.send(Method::POST, "/login", Some(&[("csrf", &csrf), ("user", &"a".repeat(70_000))])).await;
    assert_eq!(huge.status(), 413);

    let anonymous = anonymous_client();
    for forged in ["AAAAAAAAAAAAAAAAAAAAAA", "!!!", "", &"A".repeat(4000)] {
        let read = anonymous.get(app.url("/api/repos")).header(COOKIE, format!("gantry_session={forged}"));
        assert_eq!(status_of(read).await, 401, "{forged:?}");
        let page = anonymous.get(app.url("/repos/shop")).header(COOKIE, format!("gantry_session={forged}"));
        assert_eq!(status_of(page).await, 303, "{forged:?}");
        let write = anonymous
            .post(app.url("/settings/tokens"))
            .header(COOKIE, format!("gantry_session={forged}"))
            .form(&[("label", "x"), ("csrf", "x")]);
        assert_eq!(status_of(write).await, 403, "{forged:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_time_is_up() {
    let repo = TestRepo::new();
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, "", "\n[auth]\nsession_ttl = \"1s\"\n").await;
    let mut browser = Browser::new(&app);
    let response = browser.sign_in(ADMIN, ADMIN_PASSWORD).await;
    let (_, line) = session_cookie(response.headers()).unwrap();
    assert!(line.contains("Max-Age=1"), "{line}");
    let start = Instant::now();
    loop {
        // The browser would drop the cookie; a replayed one must be refused by the server.
        let status = browser.send(Method::GET, "/api/repos", None).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(start.elapsed() < EVENT_DEADLINE, "the session never expired");
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(500), "it lasted its second");
    app.stop().await;
}

#[tokio::test]
async fn removing_a_user_ends_their_sessions_and_tokens_at_once() {
    let (_repo, app) = shop().await;
    let token = add_user_with_token(app.database(), "bob", Role::Member, "pw-bob").await;
    let mut bob = Browser::signed_in(&app, "bob", "pw-bob").await;
    assert_eq!(bob.get("/api/repos").await.0, 200);
    assert_eq!(status_of(client_with_token(&token).get(app.url("/api/repos"))).await, 200);

    let store = app.open_store().await;
    let removed = gantry::auth::admin::remove_user(&store, "bob").await.unwrap();
    store.close().await;
    assert_eq!((removed.sessions, removed.tokens), (1, 1));

    assert_eq!(bob.get("/api/repos").await.0, 401);
    assert_eq!(bob.get("/").await.0, 303);
    assert_eq!(status_of(client_with_token(&token).get(app.url("/api/repos"))).await, 401);
    assert_eq!(bob.sign_in("bob", "pw-bob").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn behind_an_https_public_url_the_cookie_is_secure_and_that_origin_is_ours() {
    let repo = TestRepo::new();
    let top = "public_url = \"https://ci.example.com/\"";
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 4, top, "").await;
    let mut browser = Browser::new(&app);
    let response = browser.sign_in(ADMIN, ADMIN_PASSWORD).await;
    let (_, line) = session_cookie(response.headers()).unwrap();
    assert!(line.contains("Secure") && line.contains("HttpOnly") && line.contains("SameSite=Lax"), "{line}");

    let (_, html) = browser.get("/settings/tokens").await;
    let csrf = csrf_in(&html);
    let cookie = format!("gantry_session={}", browser.cookie.clone().unwrap());
    let post = |origin: &'static str| {
        anonymous_client()
            .post(app.url("/settings/tokens"))
            .header(COOKIE, cookie.clone())
            .header("origin", origin)
            .form(&[("label", "proxy"), ("csrf", csrf.as_str())])
    };
    assert_eq!(status_of(post("https://ci.example.com")).await, 200);
    assert_eq!(status_of(post("http://ci.example.com")).await, 403, "the scheme is part of the origin");
    app.stop().await;
}

#[tokio::test]
async fn the_command_line_adds_users_and_tokens_while_the_server_runs() {
    let repo = TestRepo::new();
    let data = tempfile::TempDir::new().unwrap();
    let config = data.path().join("gantry.toml");
    std::fs::write(&config, config_toml(data.path(), &[RepoConfig::new("shop", &repo)], 1)).unwrap();
    let log = data.path().join("server.log");
    let server = ServerProcess::start_logging_to(&config, &free_loopback_port(), &log).await;
    let config = config.to_str().unwrap();

    // Piped, one line: the password; the token alone on stdout.
    gantry_command(&["user", "add", "carol", "--read-only", "--config", config], "pw-carol\n").unwrap();
    let token = gantry_command(&["token", "create", "carol", "--config", config], "").unwrap();
    let token = token.trim_end_matches('\n');
    assert!(token.starts_with("gantry_") && token.len() == 50, "{token:?}");
    let carol = client_with_token(token);
    assert_eq!(status_of(carol.get(format!("{}/api/repos", server.base))).await, 200);
    let queue = carol.post(format!("{}/api/repos/shop/builds", server.base)).json(&json!({"branch": "main"}));
    assert_eq!(status_of(queue).await, 403, "--read-only");

    let refused = [
        (vec!["user", "add", "carol", "--config", config], "pw\n", "already exists"),
        (vec!["user", "add", "bad name", "--config", config], "pw\n", "may only contain"),
        (vec!["user", "add", "dave", "--config", config], "", "no password"),
        (vec!["token", "create", "nobody", "--config", config], "", "no user named"),
        (vec!["user", "remove", "nobody", "--config", config], "", "no user named"),
    ];
    for (args, stdin, message) in refused {
        let error = gantry_command(&args, stdin).unwrap_err();
        assert!(error.contains(message), "{args:?}: {error}");
    }
    gantry_command(&["user", "remove", "carol", "--config", config], "").unwrap();
    assert_eq!(status_of(carol.get(format!("{}/api/repos", server.base))).await, 401);

    // A failed sign-in is one warning line naming the client, never the password.
    let mut browser =
        Browser { http: anonymous_client(), base: server.base.clone(), cookie: None, csrf: String::new() };
    browser.sign_in("mallory", "hunter2-guess").await;
    browser.sign_in(ADMIN, ADMIN_PASSWORD).await;
    let start = Instant::now();
    let failures = loop {
        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap());
        let failures: Vec<String> = text.lines().filter(|l| l.contains("sign-in failed")).map(str::to_string).collect();
        if !failures.is_empty() && text.contains("signed in") {
            assert!(!text.contains("hunter2-guess") && !text.contains(ADMIN_PASSWORD), "a password was logged");
            assert!(!text.contains(token), "a token was logged");
            break failures;
        }
        assert!(start.elapsed() < EVENT_DEADLINE, "no sign-in lines in {text}");
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("WARN"), "{}", failures[0]);
    assert!(failures[0].contains("client=127.0.0.1"), "{}", failures[0]);
    assert!(
        failures[0].contains("user=\"mallory\"") && failures[0].contains("reason=\"unknown_user\""),
        "{}",
        failures[0]
    );
}

/// `text` without terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
