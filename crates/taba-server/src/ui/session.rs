//! Signing in to the UI: a token pasted into the login form becomes a
//! session kept in memory; the browser holds only the session's random id in
//! a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` under TLS).
//! The token is checked again on every request ([`Viewer`]), so revoking it
//! or its expiry ends the session. Every form that changes something carries
//! the session's CSRF token; a POST without it, or from another origin, is
//! refused ([`Viewer::check_form`]).
//!
//! Sessions live in this server's memory: a restarted server (or a new
//! leader's router) asks to sign in again. At most [`MAX_SESSIONS`] are kept;
//! one unused for [`IDLE`] is forgotten.

use super::layout::{self, query_escape};
use super::{UiError, UiState};
use crate::acl::Caller;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "taba_ui";
/// Most sessions kept at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);

/// One signed-in browser.
pub struct Session {
    /// The token's secret (`None` when ACLs are off).
    pub secret: Option<String>,
    /// What forms of this session carry.
    pub csrf: String,
    last_used: Mutex<Instant>,
}

/// Every session, by id.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Arc<Session>>>,
}

fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `secret`; returns its id.
    pub fn create(&self, secret: Option<String>) -> String {
        let now = Instant::now();
        let mut m = self.lock();
        m.retain(|_, s| now.duration_since(s.last()) < IDLE);
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.last())
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        let id = random_id();
        m.insert(
            id.clone(),
            Arc::new(Session {
                secret,
                csrf: random_id(),
                last_used: Mutex::new(now),
            }),
        );
        id
    }

    /// The live session `id`, marked used.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut m = self.lock();
        let s = m.get(id)?.clone();
        if s.last().elapsed() >= IDLE {
            m.remove(id);
            return None;
        }
        *s.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(s)
    }

    /// Forget session `id`.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Number of sessions kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Session {
    fn last(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A form's `Origin` is this server (or absent, as from a non-browser
/// client): a POST from another site is refused even before its CSRF token
/// is looked at.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Constant-time comparison of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The signed-in caller of a UI request.
pub struct Viewer {
    /// Who the token is.
    pub caller: Arc<Caller>,
    /// The session.
    pub session: Arc<Session>,
    /// The page is asked for its live region only (`X-Taba-Fragment: 1`).
    pub fragment: bool,
    origin_ok: bool,
}

impl Viewer {
    /// Refuse a POST whose CSRF token is not this session's, or that came
    /// from another origin.
    pub fn check_form(&self, csrf: &str) -> Result<(), UiError> {
        if !self.origin_ok {
            return Err(UiError::Csrf("another origin"));
        }
        if !same_token(csrf, &self.session.csrf) {
            return Err(UiError::Csrf("no valid CSRF token"));
        }
        Ok(())
    }
}

impl FromRequestParts<UiState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<Self, UiError> {
        let Some(session) = cookie(&parts.headers, COOKIE).and_then(|id| ui.sessions.get(id))
        else {
            return Err(UiError::SignIn("sign in with a token".into()));
        };
        let caller = ui
            .app
            .state
            .acl
            .authenticate(session.secret.as_deref(), crate::broker::now_ms())
            .map_err(|e| UiError::SignIn(e.to_string()))?;
        Ok(Viewer {
            caller,
            session,
            fragment: parts.headers.contains_key("x-taba-fragment"),
            origin_ok: same_origin(&parts.headers),
        })
    }
}

/// `?why=` of the login page.
#[derive(Deserialize)]
pub struct LoginQuery {
    why: Option<String>,
}

/// `GET /ui/login`.
pub async fn login_form(
    State(ui): State<UiState>,
    q: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let why = q.ok().and_then(|Query(q)| q.why);
    login_page(&ui, why.as_deref(), axum::http::StatusCode::OK)
}

fn login_page(ui: &UiState, why: Option<&str>, status: axum::http::StatusCode) -> Response {
    let acl_on = ui.app.state.acl.enabled();
    let body = html! {
        h1 { "Sign in to taba" }
        @if let Some(w) = why { p.error role="alert" { (w) } }
        form.login method="post" action="/ui/login" {
            @if acl_on {
                label for="token" { "Token (secret)" }
                input #token type="password" name="token" autocomplete="off" required
                    placeholder="taba_..." autofocus;
                p.hint { "Your token's secret, as the CLI takes with " code { "--token" } ". The browser keeps only a session cookie." }
            } @else {
                p.hint { "ACLs are off on this server: no token is needed." }
                input type="hidden" name="token" value="";
            }
            button #signin type="submit" { "Sign in" }
        }
    };
    (status, layout::bare_page("Sign in", body)).into_response()
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /ui/login`: check the token, start a session, set its cookie.
pub async fn login(
    State(ui): State<UiState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    use axum::http::StatusCode;
    if !same_origin(&headers) {
        return login_page(
            &ui,
            Some("the form came from another site"),
            StatusCode::FORBIDDEN,
        );
    }
    let Ok(Form(form)) = form else {
        return login_page(
            &ui,
            Some("the form has no token field"),
            StatusCode::BAD_REQUEST,
        );
    };
    let token = form.token.trim();
    let secret = (!token.is_empty()).then(|| token.to_string());
    if let Err(e) = ui
        .app
        .state
        .acl
        .authenticate(secret.as_deref(), crate::broker::now_ms())
    {
        return login_page(&ui, Some(&e.to_string()), StatusCode::UNAUTHORIZED);
    }
    let id = ui.sessions.create(secret);
    let mut resp = Redirect::to("/ui/").into_response();
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        IDLE.as_secs(),
        if ui.secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A form with only its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: String,
}

/// `POST /ui/logout`: forget the session, clear the cookie.
pub async fn logout(
    State(ui): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    viewer.check_form(&form.csrf)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        ui.sessions.remove(id);
    }
    let mut resp =
        Redirect::to(&format!("/ui/login?why={}", query_escape("signed out"))).into_response();
    let clear = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; taba_ui=xyz ; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn origin_must_be_this_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4646"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:4646"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn sessions_expire_lru_and_tokens_compare() {
        let s = Sessions::default();
        let id = s.create(Some("secret".into()));
        assert_eq!(s.get(&id).unwrap().secret.as_deref(), Some("secret"));
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
    }
}
