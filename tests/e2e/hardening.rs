//! Connections and bodies under hostile clients, one mechanism at a time, on servers with small
//! `[http]` limits so each test takes seconds: a head sent slowly is cut off by the header
//! timeout, a kept-alive connection left idle is closed after the idle timeout, the dashboard
//! answers while idle and slow connections fill the connection cap, and unauthenticated bodies
//! beyond the body budget get 503 with `Retry-After` while the server keeps serving.
//!
//! The clients here speak HTTP over raw TCP: they do what real clients never do (stop in the
//! middle of a head or a body), which is the point. The soak test (`soak.rs`) uses them too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// How long a test waits for the server to close a connection it should close.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// A dashboard request must be answered within this, whatever else is going on.
pub const DASHBOARD_DEADLINE: Duration = Duration::from_secs(1);

/// How often a slow client sends its next byte.
pub const TRICKLE_EVERY: Duration = Duration::from_millis(100);

/// The headers of a GitLab push whose token is wrong: the server reads the whole body before it
/// can tell, and telling costs it no hashing.
pub fn forged_gitlab_head(address: SocketAddr, content_length: usize, close: bool) -> String {
    format!(
        "POST /hooks/shop HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: not-the-secret\r\nContent-Length: {content_length}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// A server whose `[http]` section is `http`, with a repo `shop` whose pipeline runs `script`.
pub async fn app_with_http(http: &str, script: &str) -> (TestRepo, TestApp) {
    let repo = TestRepo::new();
    repo.commit("main", &[(".gantry.yml", &one_stage_pipeline(script))]);
    let app = spawn_app_configured(&[RepoConfig::new("shop", &repo)], 2, "", &format!("\n[http]\n{http}")).await;
    (repo, app)
}

/// A client that opens a new connection for every request and sends `token`.
pub fn fresh_connection_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).pool_max_idle_per_host(0).build().unwrap()
}

/// `GET /` on a new connection: answered 200 within [`DASHBOARD_DEADLINE`]; how long it took.
pub async fn dashboard_answers(client: &reqwest::Client, address: SocketAddr) -> Duration {
    let started = Instant::now();
    let answer = tokio::time::timeout(DASHBOARD_DEADLINE, async {
        let response = client.get(format!("http://{address}/")).send().await?;
        let status = response.status();
        response.bytes().await.map(|_| status)
    })
    .await;
    let took = started.elapsed();
    match answer {
        Ok(Ok(status)) => assert_eq!(status, 200, "the dashboard"),
        Ok(Err(error)) => panic!("the dashboard did not answer: {error}"),
        Err(_) => panic!("the dashboard took over {DASHBOARD_DEADLINE:?}"),
    }
    took
}

/// What the server sent on `stream` until it closed it (or `deadline` passed: `None`).
pub async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| answer)
}

/// The status code of an HTTP answer's text, and the value of its header `name` (lower case).
pub fn status_and_header(answer: &[u8], name: &str) -> (u16, Option<String>) {
    let text = String::from_utf8_lossy(answer);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let value = head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    });
    (status, value)
}

/// Whether the server has closed `stream` (end of file, a reset, or a last answer waiting).
pub fn closed_by_server(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn a_head_sent_slowly_is_cut_off_at_the_header_timeout() {
    let (_repo, app) = app_with_http("header_timeout = \"1s\"\nidle_timeout = \"1s\"\n", "true").await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        assert!(started.elapsed() < CLOSE_DEADLINE, "the slow head was never cut off");
        match tokio::time::timeout(TRICKLE_EVERY, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            // Still open: one more byte of the never-ending header.
            Err(_) => {
                if stream.write_all(b"a").await.is_err() {
                    break;
                }
            }
        }
    }
    let took = started.elapsed();
    // hyper closes the connection without an answer; the server's own backstop for connections
    // that never sent a request would come a second later.
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(took >= Duration::from_millis(900), "cut off after {took:?}, before the timeout");
    assert!(took < Duration::from_millis(1800), "cut off only after {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_after_the_idle_timeout() {
    let (_repo, app) = app_with_http("header_timeout = \"6s\"\nidle_timeout = \"1s\"\n", "true").await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let request =
        format!("GET /api/repos HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n", app.address, app.token);
    stream.write_all(request.as_bytes()).await.unwrap();
    // The whole answer (its length is declared), then nothing: the connection is kept alive.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let answered = loop {
        let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = status_and_header(head.as_bytes(), "content-length").1.unwrap().parse().unwrap();
            if body.len() >= length {
                break Instant::now();
            }
        }
    };
    assert_eq!(status_and_header(&answer, "").0, 200);
    let rest = read_until_closed(&mut stream, CLOSE_DEADLINE).await.expect("the idle connection stayed open");
    let idle = answered.elapsed();
    assert!(rest.is_empty(), "closed quietly, not answered: {}", String::from_utf8_lossy(&rest));
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?} idle, before the idle timeout");
    assert!(idle < Duration::from_secs(4), "closed after {idle:?}: the header timeout, not the idle one");
    app.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_the_dashboard_still_answers() {
    const CAP: usize = 16;
    let http = format!("max_connections = {CAP}\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"\n");
    let (_repo, app) = app_with_http(&http, "true").await;
    let mut attackers = Vec::new();
    // Idle connections, and connections that started a head and stopped.
    for i in 0..2 * CAP {
        let mut stream = TcpStream::connect(app.address).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(b"GET / HTTP/1.1\r\nX-Slow: a").await.unwrap();
        }
        attackers.push(stream);
    }
    let client = fresh_connection_client(&app.token);
    for _ in 0..10 {
        dashboard_answers(&client, app.address).await;
    }
    // The server holds no more than its cap of them: the others were closed to make room.
    let started = Instant::now();
    loop {
        let open = attackers.iter().filter(|stream| !closed_by_server(stream)).count();
        if open <= CAP {
            break;
        }
        assert!(started.elapsed() < CLOSE_DEADLINE, "{open} attacking connections still open, cap {CAP}");
        tokio::time::sleep(POLL_EVERY).await;
    }
    // The connections that were let in are served, like any other.
    let (status, _) = app.get_text("/api/repos").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn forged_bodies_beyond_the_budget_get_503_with_retry_after_and_the_server_keeps_serving() {
    const BUDGET: usize = 8 * 1024 * 1024;
    let http = format!("body_budget_bytes = {BUDGET}\nbody_budget_wait = \"200ms\"\nbody_timeout = \"60s\"\n");
    let (_repo, app) = app_with_http(&http, "true").await;
    // One forged delivery takes all of the budget but a byte and stops before its end.
    let mut hog = TcpStream::connect(app.address).await.unwrap();
    hog.write_all(forged_gitlab_head(app.address, BUDGET + 1, false).as_bytes()).await.unwrap();
    let writing = tokio::spawn(async move {
        hog.write_all(&vec![b' '; BUDGET - 1]).await.unwrap();
        hog
    });

    // Another forged delivery, small enough to arrive whole: refused once the budget is full.
    let small = |address| async move {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let body = vec![b' '; 4096];
        stream.write_all(forged_gitlab_head(address, body.len(), true).as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        read_until_closed(&mut stream, CLOSE_DEADLINE).await.expect("the server answered")
    };
    let started = Instant::now();
    let refused = loop {
        let answer = small(app.address).await;
        let (status, retry_after) = status_and_header(&answer, "retry-after");
        if status == 503 {
            break retry_after;
        }
        assert_eq!(status, 401, "while the budget has room: {}", String::from_utf8_lossy(&answer));
        assert!(started.elapsed() < CLOSE_DEADLINE, "the budget never filled up");
        tokio::time::sleep(POLL_EVERY).await;
    };
    let retry_after: u64 = refused.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // The dashboard needs no budget: it answers at once.
    dashboard_answers(&fresh_connection_client(&app.token), app.address).await;

    // The budget comes back when the hog goes away, and deliveries are read again.
    let hog = writing.await.unwrap();
    drop(hog);
    let started = Instant::now();
    loop {
        let (status, _) = status_and_header(&small(app.address).await, "");
        if status == 401 {
            break;
        }
        assert_eq!(status, 503);
        assert!(started.elapsed() < CLOSE_DEADLINE, "the budget never came back");
        tokio::time::sleep(POLL_EVERY).await;
    }
    let ping = b"{\"zen\": \"Keep it logically awesome.\"}".to_vec();
    let (status, answer) = app.deliver("shop", &github_headers("ping", &ping, &unique_delivery()), ping).await;
    assert_eq!(status, 200, "{answer}");
    app.stop().await;
}
