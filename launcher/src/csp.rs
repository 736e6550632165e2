//! Whether a document's own `Content-Security-Policy` keeps its WebSockets
//! (and every other connection) on the gateway. CDP `Fetch` never sees a
//! WebSocket handshake, and the token header goes on every request of the
//! tab, so a document may render with the token armed only if the browser
//! itself will refuse its connections elsewhere.
//!
//! Parsing follows CSP 3: a header value holds policies separated by `,`;
//! a policy holds directives separated by `;`; a directive is a
//! case-insensitive name and whitespace-separated sources; of repeated
//! directives the first counts. All policies are enforced, so one policy
//! that limits `connect-src` (or, without it, `default-src`) is enough.

/// Where the display may connect: the gateway, and only it.
#[derive(Debug, Clone)]
pub struct Gateway<'a> {
    /// `https://localhost:PORT`.
    pub origin: &'a str,
    /// The minted `wss://localhost:PORT/PATH`.
    pub ws_url: &'a str,
}

/// Longest CSP text quoted in a log line.
const MAX_QUOTED: usize = 200;

/// `Ok` when some policy in `headers` limits connections to the gateway;
/// else why not, naming the CSP (truncated).
pub fn locks_connections(headers: &[String], gw: &Gateway<'_>) -> Result<(), String> {
    let mut seen_any = false;
    for header in headers {
        for policy in header.split(',') {
            seen_any |= !policy.trim().is_empty();
            if policy_locks(policy, gw) {
                return Ok(());
            }
        }
    }
    if !seen_any {
        return Err("the document has no Content-Security-Policy".into());
    }
    let text = headers.join(", ");
    let quoted: String = text.chars().take(MAX_QUOTED).collect();
    let more = if quoted.len() < text.len() { "…" } else { "" };
    Err(format!(
        "its Content-Security-Policy {quoted:?}{more} does not limit connect-src (or default-src) to the gateway"
    ))
}

fn policy_locks(policy: &str, gw: &Gateway<'_>) -> bool {
    let mut connect: Option<Vec<&str>> = None;
    let mut default: Option<Vec<&str>> = None;
    for directive in policy.split(';') {
        let mut words = directive.split_ascii_whitespace();
        let Some(name) = words.next() else { continue };
        let slot = if name.eq_ignore_ascii_case("connect-src") {
            &mut connect
        } else if name.eq_ignore_ascii_case("default-src") {
            &mut default
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(words.collect());
        }
    }
    connect
        .or(default)
        .is_some_and(|sources| sources.iter().all(|s| source_allowed(s, gw)))
}

/// `'self'`, `'none'`, the gateway's https or wss origin (with or without a
/// trailing `/`), or exactly the minted ws_url. Everything else (`*`,
/// schemes, other hosts, paths, keywords) is refused.
fn source_allowed(source: &str, gw: &Gateway<'_>) -> bool {
    let s = source.to_ascii_lowercase();
    if s == "'self'" || s == "'none'" {
        return true;
    }
    let https = gw.origin.to_ascii_lowercase();
    let wss = https
        .strip_prefix("https://")
        .map(|rest| format!("wss://{rest}"));
    let mut ok = vec![
        https.clone(),
        format!("{https}/"),
        gw.ws_url.to_ascii_lowercase(),
    ];
    if let Some(w) = wss {
        ok.push(format!("{w}/"));
        ok.push(w);
    }
    ok.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Gateway<'static> = Gateway {
        origin: "https://localhost:8933",
        ws_url: "wss://localhost:8933/ws",
    };

    fn ok(h: &[&str]) -> bool {
        let v: Vec<String> = h.iter().map(|s| (*s).to_owned()).collect();
        locks_connections(&v, &GW).is_ok()
    }

    #[test]
    fn locking_policies() {
        for h in [
            // screengate's own
            &[
                "default-src 'self'; connect-src wss://localhost:8933; frame-ancestors 'none'; frame-src 'none'; object-src 'none'; base-uri 'none'",
            ][..],
            &["default-src 'self'"],
            &["connect-src 'none'"],
            &["connect-src"],
            &["CONNECT-SRC 'SELF' wss://localhost:8933/ws"],
            &["connect-src https://localhost:8933/ wss://localhost:8933/"],
            &["script-src *; connect-src 'self'"],
            &["default-src *; connect-src 'self'"],
            &["connect-src 'self'; connect-src *"],
            // one strict policy among several is enough: all are enforced
            &["connect-src *, connect-src 'self'"],
            &["connect-src *", "default-src 'self'"],
            &["  ;; connect-src\t'self' ;"],
        ] {
            assert!(ok(h), "{h:?}");
        }
    }

    #[test]
    fn non_locking_policies() {
        for h in [
            &[][..],
            &[""],
            &[" , "],
            &["script-src 'self'"],
            &["frame-ancestors 'none'"],
            &["connect-src *"],
            &["connect-src ws:"],
            &["connect-src wss:"],
            &["connect-src https:"],
            &["connect-src http:"],
            &["connect-src 'self' ws://127.0.0.1:9"],
            &["connect-src 'self' wss://localhost:8934"],
            &["connect-src wss://localhost:8933.evil.example"],
            &["connect-src wss://localhost:8933/other"],
            &["connect-src wss://localhost"],
            &["connect-src wss://*.localhost:8933"],
            &["connect-src ws://localhost:8933"],
            &["connect-src http://localhost:8933"],
            &["connect-src https://127.0.0.1:8933"],
            &["connect-src 'self' data: blob:"],
            &["connect-src 'unsafe-inline'"],
            &["connect-src self"],
            &["default-src *"],
            &["default-src 'self' *"],
            &["default-src * ; connect-src-elem 'self'"],
            &["connect-src * ; connect-src 'self'"],
            &["connect-srcx 'self'"],
            &["xconnect-src 'self'"],
        ] {
            assert!(!ok(h), "{h:?}");
        }
    }

    #[test]
    fn the_reason_names_the_csp() {
        let e = locks_connections(&["connect-src *".into()], &GW).err();
        assert!(
            e.as_deref().is_some_and(|m| m.contains("connect-src *")),
            "{e:?}"
        );
        let e = locks_connections(&[], &GW).err();
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("no Content-Security-Policy")),
            "{e:?}"
        );
    }
}
