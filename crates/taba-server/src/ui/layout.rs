//! The page shell (head, navigation, the live region) and small helpers the
//! views share: bars, sizes, times, escaping for URLs.
//!
//! Pages carry a strict Content-Security-Policy (scripts, styles and images
//! from this server only, no inline script or style, no framing): bars are
//! `<meter>` elements and heat-map cells take a colour class, so nothing needs
//! an inline style.

use super::session::Viewer;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// What the browser may load and run on a UI page.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A rendered page: its live region (fetched again when events say it may
/// have changed) and the rest, which stays (forms, a log being followed).
pub struct Page {
    /// Title (and the current navigation entry).
    pub title: String,
    /// `topic=...&...` of the events that refresh the live region; `*`:
    /// every topic the token may read; empty: none.
    pub topics: &'static str,
    /// The live region.
    pub live: Markup,
    /// Below the live region, never refreshed.
    pub rest: Markup,
}

fn headers(resp: &mut Response) {
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on forms,
        // and the origin check of every POST refuses them.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        h.insert(k, header::HeaderValue::from_static(v));
    }
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · taba" }
        link rel="stylesheet" href="/ui/assets/taba.css";
        script src="/ui/assets/taba.js" defer {}
    }
}

const NAV: [(&str, &str); 6] = [
    ("/ui/", "Overview"),
    ("/ui/jobs", "Jobs"),
    ("/ui/nodes", "Nodes"),
    ("/ui/namespaces", "Namespaces"),
    ("/ui/evaluations", "Evaluations"),
    ("/ui/jobs/run", "Run a job"),
];

impl Page {
    /// The page as a response: the whole document, or only the live
    /// region when the script asks for it.
    pub fn render(self, viewer: &Viewer) -> Response {
        if viewer.fragment {
            let mut resp = Html(self.live.into_string()).into_response();
            headers(&mut resp);
            return resp;
        }
        let doc = html! {
            (DOCTYPE)
            html lang="en" {
                head { (head(&self.title)) }
                body {
                    header.top {
                        a.brand href="/ui/" { "taba" }
                        nav {
                            @for (href, name) in NAV {
                                a href=(href) class=[(name == self.title).then_some("here")] { (name) }
                            }
                        }
                        div.who {
                            span #live-status title="live updates" {}
                            span.caller { (viewer.caller.actor()) }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.session.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main {
                        div #live data-topics=(self.topics) { (self.live) }
                        (self.rest)
                    }
                }
            }
        };
        let mut resp = Html(doc.into_string()).into_response();
        headers(&mut resp);
        resp
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare_page(title: &str, body: Markup) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body.bare { main { (body) } }
        }
    };
    let mut resp = Html(doc.into_string()).into_response();
    headers(&mut resp);
    resp
}

/// The CSRF field of a form.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.session.csrf); }
}

/// A bar of `used` out of `total`, with its text.
pub fn bar(used: u64, total: u64, text: &str) -> Markup {
    let frac = if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).min(1.0)
    };
    html! {
        span.bar {
            meter min="0" max="1" low="0.7" high="0.9" optimum="0" value=(format!("{frac:.3}")) {}
            span.bartext { (text) }
        }
    }
}

/// Per cent of `used` in `total` (0 when there is no total).
pub fn percent(used: u64, total: u64) -> u64 {
    used.saturating_mul(100)
        .checked_div(total)
        .map_or(0, |p| p.min(999))
}

/// Bytes as people read them (`512 MiB`, `3.5 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 || v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How long ago `ms` (milliseconds since the epoch) was.
pub fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = crate::broker::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// The first 8 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `s` escaped for a URL query value or path segment.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A bad query string (`?page=x`) as a 400 naming it.
pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> super::UiError {
    super::UiError::BadInput {
        message: format!("bad query string: {}", e.body_text()),
        field: Some("query".into()),
    }
}

/// A status word as a badge.
pub fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge s-{status}")) { (status) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_escapes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(query_escape("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(percent(1, 0), 0);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(short("0123456789"), "01234567");
    }
}
