//! The tab lock: every request the tab makes pauses in `Fetch` and goes on
//! only to the gateway's exact origin; a document (or any context that can
//! run code) of the gateway renders only if its own CSP keeps its
//! connections on the gateway; the display has one window.
//!
//! Owns: the decisions ([`Lock::on_request`], [`Lock::is_gateway_socket`],
//! [`is_second_window`]) and the URL helpers that keep paths and queries out
//! of the logs. Leaves to others: the CSP grammar (`csp`), sending the
//! replies (`events`), and the header (`arm`).

use screengate_cdp::{ContinueRequest, ErrorReason, FailRequest, PausedResponse};
use tracing::warn;

use crate::csp;

/// The gateway the tab is locked to, for one browser life.
#[derive(Debug, Clone)]
pub(crate) struct Lock {
    /// `https://localhost:PORT`.
    pub origin: String,
    /// The gateway's WebSocket URL.
    pub ws_url: String,
}

/// What to answer a paused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let it go on (and pause it again at the response stage, to check
    /// the response's own CSP, when `check_response`).
    Continue {
        /// Pause again at the response stage.
        check_response: bool,
    },
    /// Fail it with `BlockedByClient`.
    Block,
}

impl Verdict {
    /// The `Fetch.continueRequest` for `request_id`, or `None` for a block.
    pub fn continue_request(self, request_id: &str) -> Option<ContinueRequest<'_>> {
        match self {
            Verdict::Continue { check_response } => Some(ContinueRequest {
                request_id,
                intercept_response: check_response,
            }),
            Verdict::Block => None,
        }
    }

    /// The `Fetch.failRequest` for `request_id`.
    pub fn fail_request(request_id: &str) -> FailRequest<'_> {
        FailRequest {
            request_id,
            error_reason: ErrorReason::BlockedByClient,
        }
    }
}

impl Lock {
    /// The verdict on a paused request (warnings name the origin or path,
    /// never the query).
    pub fn on_request(
        &self,
        url: &str,
        resource_type: &str,
        response: Option<&PausedResponse>,
    ) -> Verdict {
        if !same_origin(url, &self.origin) {
            warn!(
                origin = origin_of(url),
                "blocked a request from the display tab to another origin"
            );
            return Verdict::Block;
        }
        if let Some(resp) = response {
            // A document of the gateway, at the response stage: it renders
            // only if its own CSP keeps its connections on the gateway
            // (Fetch never sees a WebSocket handshake).
            let lock = csp::Gateway {
                origin: &self.origin,
                ws_url: &self.ws_url,
            };
            return match csp::locks_connections(&resp.csp, &lock) {
                Ok(()) => Verdict::Continue {
                    check_response: false,
                },
                Err(why) => {
                    warn!(
                        path = path_of(url),
                        status = ?resp.status,
                        "lock violation: refused a document of the gateway: {why}"
                    );
                    Verdict::Block
                }
            };
        }
        Verdict::Continue {
            check_response: needs_own_csp(resource_type),
        }
    }

    /// Whether a WebSocket the tab created goes to the gateway; one that
    /// does not is reported (a report, not a pause: the handshake is
    /// already on its way, and the document's CSP is what stops it).
    pub fn is_gateway_socket(&self, url: &str) -> bool {
        let ours = url == self.ws_url
            || url
                .strip_prefix(self.ws_url.as_str())
                .is_some_and(|r| r.starts_with(['?', '#']));
        if !ours {
            warn!(
                origin = origin_of(url),
                "lock violation: the display tab created a WebSocket to a URL other than the gateway's"
            );
        }
        ours
    }
}

/// Whether a new target is a second window to close: a page that is not
/// our tab (once our tab is known).
pub(crate) fn is_second_window(kind: &str, target_id: &str, ours: Option<&str>) -> bool {
    kind == "page" && ours.is_some_and(|o| o != target_id)
}

/// True when `url` is on exactly `origin` (scheme, host and port).
fn same_origin(url: &str, origin: &str) -> bool {
    url.strip_prefix(origin)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
}

/// Whether a response must carry a connection-locking CSP of its own. Only
/// types that can never start an execution context are exempt; documents,
/// scripts (a worker's main script takes the policy of its own response),
/// `Other` and any type this list does not know are checked.
fn needs_own_csp(resource_type: &str) -> bool {
    !matches!(
        resource_type,
        "Stylesheet"
            | "Image"
            | "Media"
            | "Font"
            | "TextTrack"
            | "XHR"
            | "Fetch"
            | "EventSource"
            | "Manifest"
            | "Ping"
            | "CSPViolationReport"
            | "Preflight"
    )
}

/// The path of a URL without query or fragment, for logs.
fn path_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let start = url
        .get(after..)
        .and_then(|r| r.find('/'))
        .map(|i| i + after)
        .unwrap_or(url.len());
    let rest = url.get(start..).unwrap_or("");
    rest.split(['?', '#']).next().unwrap_or("")
}

/// The origin part of a URL, for logs (never the path or query).
pub(crate) fn origin_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url
        .get(after..)
        .and_then(|r| r.find(['/', '?', '#']))
        .map(|i| i + after)
        .unwrap_or(url.len());
    url.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        Lock {
            origin: "https://localhost:8933".into(),
            ws_url: "wss://localhost:8933/ws".into(),
        }
    }

    #[test]
    fn same_origin_is_exact() {
        let o = "https://localhost:8933";
        for u in [
            "https://localhost:8933",
            "https://localhost:8933/",
            "https://localhost:8933/app.js?x",
            "https://localhost:8933#f",
        ] {
            assert!(same_origin(u, o), "{u}");
        }
        for u in [
            "https://localhost:89331/",
            "https://localhost:8933.evil.example/",
            "http://localhost:8933/",
            "https://127.0.0.1:8933/",
            "https://evil.example/https://localhost:8933",
            "https://localhost:8933@evil.example/",
            "data:text/html,x",
        ] {
            assert!(!same_origin(u, o), "{u}");
        }
    }

    #[test]
    fn origin_of_drops_path_and_query() {
        assert_eq!(
            origin_of("http://127.0.0.1:9/secret?q=1"),
            "http://127.0.0.1:9"
        );
        assert_eq!(origin_of("https://a.example"), "https://a.example");
        assert_eq!(path_of("https://a.example/p/q?secret#f"), "/p/q");
    }

    #[test]
    fn contexts_need_their_own_csp() {
        for t in [
            "Document",
            "Script",
            "Other",
            "",
            "SignedExchange",
            "Prefetch",
            "WebBundle",
        ] {
            assert!(needs_own_csp(t), "{t}");
        }
        for t in ["Image", "Stylesheet", "Font", "XHR", "Fetch"] {
            assert!(!needs_own_csp(t), "{t}");
        }
    }

    #[test]
    fn verdicts() {
        let l = lock();
        let resp = |csp: &[&str]| PausedResponse {
            status: Some(200),
            csp: csp.iter().map(|c| (*c).to_owned()).collect(),
        };
        // other origins: blocked at the request stage, whatever the type
        for u in ["https://evil.example/", "http://localhost:8933/", "data:,x"] {
            assert_eq!(l.on_request(u, "Image", None), Verdict::Block, "{u}");
        }
        // the gateway: a document is checked again at the response stage
        assert_eq!(
            l.on_request("https://localhost:8933/", "Document", None),
            Verdict::Continue {
                check_response: true
            }
        );
        assert_eq!(
            l.on_request("https://localhost:8933/x.png", "Image", None),
            Verdict::Continue {
                check_response: false
            }
        );
        // at the response stage: only a CSP that locks connections passes
        assert_eq!(
            l.on_request(
                "https://localhost:8933/",
                "Document",
                Some(&resp(&["connect-src 'self'"]))
            ),
            Verdict::Continue {
                check_response: false
            }
        );
        for csp in [&[][..], &["img-src 'none'"], &["connect-src *"]] {
            assert_eq!(
                l.on_request("https://localhost:8933/", "Document", Some(&resp(csp))),
                Verdict::Block,
                "{csp:?}"
            );
        }
        // the wire form of each verdict
        let c = Verdict::Continue {
            check_response: true,
        }
        .continue_request("r");
        assert!(c.is_some_and(|c| c.intercept_response && c.request_id == "r"));
        assert!(Verdict::Block.continue_request("r").is_none());
        assert_eq!(
            Verdict::fail_request("r").error_reason,
            ErrorReason::BlockedByClient
        );
    }

    #[test]
    fn gateway_sockets_are_the_exact_ws_url() {
        let l = lock();
        for u in [
            "wss://localhost:8933/ws",
            "wss://localhost:8933/ws?x=1",
            "wss://localhost:8933/ws#f",
        ] {
            assert!(l.is_gateway_socket(u), "{u}");
        }
        for u in [
            "wss://localhost:8933/ws2",
            "wss://localhost:8933/wsx?y",
            "ws://localhost:8933/ws",
            "wss://localhost:89331/ws",
            "wss://evil.example/ws",
            "wss://localhost:8933/",
        ] {
            assert!(!l.is_gateway_socket(u), "{u}");
        }
    }

    #[test]
    fn only_other_pages_are_second_windows() {
        assert!(is_second_window("page", "B", Some("A")));
        assert!(!is_second_window("page", "A", Some("A")));
        assert!(!is_second_window("page", "B", None));
        assert!(!is_second_window("iframe", "B", Some("A")));
        assert!(!is_second_window("worker", "B", Some("A")));
    }
}
