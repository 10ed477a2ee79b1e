//! The HTTP side of the web UI: the page's three files, a JSON API over the
//! agent's calls, and a stream of server-sent events. Every request passes
//! [`guard`] first.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /`, `/app.js`, `/app.css` | the page (no secret in it) |
//! | `GET /api/status` | [`StatusView`] |
//! | `POST /api/register`, `/api/login` | `{username, password}` → [`StatusView`] |
//! | `GET /api/groups` · `POST /api/groups` | [`GroupView`]s · `{name}` → [`GroupView`] |
//! | `GET /api/groups/{name}/messages?limit=N` | [`MessageView`]s, oldest first |
//! | `POST /api/groups/{name}/messages` | `{text}` → [`SentView`] |
//! | `POST /api/groups/{name}/invite` | `{usernames: [..]}` → [`GroupView`] |
//! | `GET /api/devices` | the account's devices |
//! | `GET /api/events?token=T` | `changed`, `notice`, `connection` events |
//!
//! Refusals are `{"code", "message"}` with a 4xx or 5xx status.
//!
//! [`StatusView`]: super::views::StatusView
//! [`GroupView`]: super::views::GroupView
//! [`MessageView`]: super::views::MessageView
//! [`SentView`]: super::views::SentView

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quicnprotochat_crypto::token::TokenHash;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::views::WebError;
use crate::resident::{Call, Event, Handles};

/// Largest request body: a message (64 KiB of text) with room for JSON escapes.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// History returned when the page names no limit.
const DEFAULT_HISTORY: usize = 200;

/// What every handler shares.
pub struct WebState {
    /// `Host` values a request may carry (the bound address, by IP and as
    /// `localhost`).
    hosts: Vec<String>,
    token: TokenHash,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Event>,
    stopping: watch::Receiver<bool>,
}

impl WebState {
    /// The state of a UI bound at `addr` whose API takes `token`.
    pub fn new(addr: SocketAddr, token: &str, resident: Handles) -> Arc<WebState> {
        let Handles {
            calls,
            events,
            stopping,
            ..
        } = resident;
        let port = addr.port();
        Arc::new(WebState {
            hosts: vec![
                addr.to_string(),
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ],
            token: TokenHash::of(token.as_bytes()),
            calls,
            events,
            stopping,
        })
    }

    /// Asks the agent; waits for room in its queue, then for the answer.
    async fn ask<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, WebError>>) -> Call,
    ) -> Result<T, WebError> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(build(reply))
            .await
            .map_err(|_| WebError::stopped())?;
        answer.await.map_err(|_| WebError::stopped())?
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// The UI's routes behind [`guard`].
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/api/status", get(status))
        .route("/api/register", post(register))
        .route("/api/login", post(login))
        .route("/api/groups", get(groups).post(create_group))
        .route("/api/groups/{name}/messages", get(history).post(send))
        .route("/api/groups/{name}/invite", post(invite))
        .route("/api/devices", get(devices))
        .route("/api/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Refuses what is not for this UI: a `Host` other than the bound address (a
/// DNS-rebinding page), and an API call without the access token. The page's
/// files need no token: they hold no secret.
async fn guard(State(state): State<Arc<WebState>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !state.hosts.iter().any(|h| h == host) {
        return WebError {
            status: 403,
            code: "bad_host",
            message: format!("this UI answers only to {}", state.hosts[0]),
        }
        .into_response();
    }
    let path = request.uri().path();
    if path.starts_with("/api/") {
        let presented = bearer(request.headers()).or_else(|| {
            // An EventSource cannot set headers: the event stream alone takes
            // the token in its query.
            (path == "/api/events")
                .then(|| query_token(request.uri().query().unwrap_or("")))
                .flatten()
        });
        if !presented.is_some_and(|t| state.token.matches(t.as_bytes())) {
            return WebError {
                status: 401,
                code: "unauthorized",
                message:
                    "missing or wrong access token: open the address `quicnprotochat web` printed"
                        .into(),
            }
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("assets/index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

/// A JSON body, or a typed refusal when it is not one (axum's own rejection
/// is plain text).
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(WebError {
                status: 413,
                code: "too_large",
                message: format!("the request is over {MAX_BODY_BYTES} bytes"),
            }),
            Err(e) => Err(WebError::invalid(e.body_text())),
        }
    }
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
}

#[derive(Deserialize)]
struct Invitees {
    usernames: Vec<String>,
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

type ApiResult<T> = Result<Json<T>, WebError>;

async fn status(State(s): State<Arc<WebState>>) -> ApiResult<super::views::StatusView> {
    s.ask(Call::Status).await.map(Json)
}

async fn register(
    State(s): State<Arc<WebState>>,
    Body(c): Body<Credentials>,
) -> ApiResult<super::views::StatusView> {
    s.ask(|reply| Call::Register {
        username: c.username,
        password: c.password,
        reply,
    })
    .await
    .map(|signed_in| Json(signed_in.status))
}

async fn login(
    State(s): State<Arc<WebState>>,
    Body(c): Body<Credentials>,
) -> ApiResult<super::views::StatusView> {
    s.ask(|reply| Call::Login {
        username: c.username,
        password: c.password,
        reply,
    })
    .await
    .map(|signed_in| Json(signed_in.status))
}

async fn groups(State(s): State<Arc<WebState>>) -> ApiResult<Vec<super::views::GroupView>> {
    s.ask(Call::Groups).await.map(Json)
}

async fn create_group(
    State(s): State<Arc<WebState>>,
    Body(g): Body<NewGroup>,
) -> ApiResult<super::views::GroupView> {
    s.ask(|reply| Call::Create {
        name: g.name,
        reply,
    })
    .await
    .map(Json)
}

async fn history(
    State(s): State<Arc<WebState>>,
    Path(group): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Vec<super::views::MessageView>> {
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    s.ask(|reply| Call::History {
        group,
        limit,
        reply,
    })
    .await
    .map(Json)
}

async fn send(
    State(s): State<Arc<WebState>>,
    Path(group): Path<String>,
    Body(m): Body<NewMessage>,
) -> ApiResult<super::views::SentView> {
    s.ask(|reply| Call::Send {
        group,
        text: m.text,
        reply,
    })
    .await
    .map(Json)
}

async fn invite(
    State(s): State<Arc<WebState>>,
    Path(group): Path<String>,
    Body(i): Body<Invitees>,
) -> ApiResult<super::views::GroupView> {
    s.ask(|reply| Call::Invite {
        group,
        usernames: i.usernames,
        reply,
    })
    .await
    .map(Json)
}

async fn devices(State(s): State<Arc<WebState>>) -> ApiResult<Vec<String>> {
    s.ask(Call::Devices).await.map(Json)
}

/// The page's live updates; the stream ends when the UI stops.
async fn events(
    State(s): State<Arc<WebState>>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let events = s.events.subscribe();
    let stopping = s.stopping.clone();
    let stream = futures::stream::unfold(
        (events, stopping),
        |(mut events, mut stopping)| async move {
            {
                if *stopping.borrow() {
                    return None;
                }
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = stopping.changed() => return None,
                };
                let sse = match event {
                    Ok(Event::Changed) => SseEvent::default().event("changed").data("{}"),
                    Ok(Event::Line(line)) if line.is_notice() => SseEvent::default()
                        .event("notice")
                        .data(serde_json::json!({ "line": line.display() }).to_string()),
                    Ok(Event::Line(line)) => SseEvent::default()
                        .event("message")
                        .data(crate::output::line_json(&line)),
                    Ok(Event::Connection(link)) => SseEvent::default().event("connection").data(
                        serde_json::json!({
                            "state": link.state(),
                            "next_try_ms": link.next_try_ms(),
                        })
                        .to_string(),
                    ),
                    // Fell behind: everything may have changed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        SseEvent::default().event("changed").data("{}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((Ok(sse), (events, stopping)))
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
