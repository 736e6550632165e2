//! The commands screengate-launch sends, as typed values: each parameter
//! struct names its CDP method and the shape of its reply ([`Method`]), and
//! [`Command::encode`] frames it for the pipe in a zeroizing buffer.
//!
//! Owns: method names, parameter and reply shapes, and the one encoder.
//! Leaves to the launcher: when to send what, the pipe, and what a reply
//! means.
//!
//! The token travels in one command, [`SetExtraHttpHeaders`]. It borrows
//! the token (no copy), redacts it from `Debug`, and is serialised straight
//! into a [`Frame`]: a `Zeroizing` buffer sized before it is written, so
//! it never reallocates and leaves no unwiped copy behind.

use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

/// A CDP method: the parameters are `Self`.
pub trait Method: Serialize {
    /// The method name, e.g. `Network.enable`.
    const NAME: &'static str;
    /// What the reply's `result` parses into.
    type Reply: DeserializeOwned;
}

/// A reply whose content is not used (only its arrival, or its error).
pub type Ignored = serde::de::IgnoredAny;

/// One encoded command: JSON and the terminating NUL, wiped on drop.
pub type Frame = Zeroizing<Vec<u8>>;

/// A command to the browser: a method's parameters with an id and a session.
#[derive(Debug)]
pub struct Command<'a, M> {
    /// Correlates the response.
    pub id: u64,
    /// The method's parameters.
    pub params: &'a M,
    /// The flattened target session, or the browser when absent.
    pub session_id: Option<&'a str>,
}

impl<M: Method> Serialize for Command<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("method", M::NAME)?;
        m.serialize_entry("params", self.params)?;
        if let Some(session) = self.session_id {
            m.serialize_entry("sessionId", session)?;
        }
        m.end()
    }
}

/// Counts the bytes serialisation would write, keeping none of them.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(b.len());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<M: Method> Command<'_, M> {
    /// The frame to write: JSON and the terminating NUL, in a zeroizing
    /// buffer that is the only copy. Its exact length is measured first
    /// (nothing kept), the buffer is allocated once at that length plus the
    /// NUL, and the JSON is written into that fixed slice: a writer that
    /// cannot grow, so no reallocation can leave a copy behind.
    pub fn encode(&self) -> Result<Frame, serde_json::Error> {
        // Both passes through `dyn Write`: one serialiser per command
        // type, not one per writer type.
        let mut n = Counter(0);
        serde_json::to_writer(&mut n as &mut dyn std::io::Write, self)?;
        let mut frame = Zeroizing::new(vec![0u8; n.0 + 1]);
        let (json, nul) = frame.split_at_mut(n.0);
        let mut w: &mut [u8] = json;
        serde_json::to_writer(&mut w as &mut dyn std::io::Write, self)?;
        if !w.is_empty() || nul != [0] {
            // Serialisation is deterministic; a second pass that wrote
            // less is a bug, not a frame.
            return Err(serde::ser::Error::custom(
                "CDP command changed length between passes",
            ));
        }
        Ok(frame)
    }
}

/// Declares a parameter struct's method and reply.
macro_rules! method {
    ($ty:ty, $name:literal, $reply:ty) => {
        impl Method for $ty {
            const NAME: &'static str = $name;
            type Reply = $reply;
        }
    };
}

/// `Browser.close`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BrowserClose {}
method!(BrowserClose, "Browser.close", Ignored);

/// `Target.getTargets`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GetTargets {}
method!(GetTargets, "Target.getTargets", Targets);

/// The reply to [`GetTargets`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Every target the browser has.
    pub target_infos: Vec<TargetInfo>,
}

/// One target of [`Targets`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfo {
    /// The target id.
    pub target_id: String,
    /// `page`, `iframe`, `worker`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// `Target.setDiscoverTargets`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SetDiscoverTargets {
    /// Report targets as they come and go.
    pub discover: bool,
}
method!(SetDiscoverTargets, "Target.setDiscoverTargets", Ignored);

/// `Target.attachToTarget`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachToTarget<'a> {
    /// The target.
    pub target_id: &'a str,
    /// One connection, sessions named by `sessionId`.
    pub flatten: bool,
}
method!(AttachToTarget<'_>, "Target.attachToTarget", Attached);

/// The reply to [`AttachToTarget`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    /// The flattened session for the target.
    pub session_id: String,
}

/// `Target.closeTarget`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTarget<'a> {
    /// The target.
    pub target_id: &'a str,
}
method!(CloseTarget<'_>, "Target.closeTarget", Ignored);

/// `Network.enable`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NetworkEnable {}
method!(NetworkEnable, "Network.enable", Ignored);

/// `Network.setBypassServiceWorker`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SetBypassServiceWorker {
    /// Every request goes to the network, never to a service worker.
    pub bypass: bool,
}
method!(
    SetBypassServiceWorker,
    "Network.setBypassServiceWorker",
    Ignored
);

/// `Network.setExtraHTTPHeaders` with one header: the token's. Borrows the
/// value (no copy) and never shows it in `Debug`.
#[derive(Clone, Copy)]
pub struct SetExtraHttpHeaders<'a> {
    /// The header name.
    pub name: &'a str,
    /// The header value (secret).
    pub value: &'a str,
}
method!(
    SetExtraHttpHeaders<'_>,
    "Network.setExtraHTTPHeaders",
    Ignored
);

impl Serialize for SetExtraHttpHeaders<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct One<'a>(&'a str, &'a str);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(self.0, self.1)?;
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("headers", &One(self.name, self.value))?;
        m.end()
    }
}

impl std::fmt::Debug for SetExtraHttpHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetExtraHttpHeaders")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `Fetch.enable`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FetchEnable<'a> {
    /// Which requests pause.
    pub patterns: &'a [RequestPattern<'a>],
}
method!(FetchEnable<'_>, "Fetch.enable", Ignored);

/// One pattern of [`FetchEnable`].
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPattern<'a> {
    /// A wildcard URL pattern (`*`: every request).
    pub url_pattern: &'a str,
}

/// `Fetch.continueRequest`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContinueRequest<'a> {
    /// Fetch's request id.
    pub request_id: &'a str,
    /// Pause again at the response stage (omitted when false).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intercept_response: bool,
}
method!(ContinueRequest<'_>, "Fetch.continueRequest", Ignored);

/// `Fetch.failRequest`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailRequest<'a> {
    /// Fetch's request id.
    pub request_id: &'a str,
    /// What the page sees.
    pub error_reason: ErrorReason,
}
method!(FailRequest<'_>, "Fetch.failRequest", Ignored);

/// The `Network.ErrorReason`s the launcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorReason {
    /// The client (the tab lock) refused the request.
    BlockedByClient,
}

/// `Page.enable`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PageEnable {}
method!(PageEnable, "Page.enable", Ignored);

/// `Page.navigate`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Navigate<'a> {
    /// Where to.
    pub url: &'a str,
}
method!(Navigate<'_>, "Page.navigate", Navigated);

/// The reply to [`Navigate`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Navigated {
    /// Why the navigation failed, if it did (absent or empty on success).
    #[serde(default)]
    pub error_text: Option<String>,
}

/// `Page.captureScreenshot`, as PNG.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CaptureScreenshot {
    /// The image format.
    pub format: ImageFormat,
}
method!(CaptureScreenshot, "Page.captureScreenshot", Screenshot);

/// Image formats of [`CaptureScreenshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG.
    Png,
}

/// The reply to [`CaptureScreenshot`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Screenshot {
    /// The image, base64.
    pub data: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn wire<M: Method>(m: &M, session: Option<&str>) -> Value {
        let f = Command {
            id: 7,
            params: m,
            session_id: session,
        }
        .encode()
        .unwrap();
        assert_eq!(f.last(), Some(&0), "NUL-terminated");
        assert_eq!(f.iter().filter(|b| **b == 0).count(), 1, "one NUL");
        serde_json::from_slice(&f[..f.len() - 1]).unwrap()
    }

    #[test]
    fn every_command_keeps_the_wire_format() {
        let s = Some("S1");
        assert_eq!(
            wire(&BrowserClose {}, None),
            json!({"id":7,"method":"Browser.close","params":{}})
        );
        assert_eq!(
            wire(&GetTargets {}, None),
            json!({"id":7,"method":"Target.getTargets","params":{}})
        );
        assert_eq!(
            wire(&SetDiscoverTargets { discover: true }, None)["params"],
            json!({"discover":true})
        );
        assert_eq!(
            wire(
                &AttachToTarget {
                    target_id: "T",
                    flatten: true
                },
                None
            )["params"],
            json!({"targetId":"T","flatten":true})
        );
        assert_eq!(
            wire(&CloseTarget { target_id: "T" }, None)["params"],
            json!({"targetId":"T"})
        );
        assert_eq!(
            wire(&NetworkEnable {}, s),
            json!({"id":7,"method":"Network.enable","params":{},"sessionId":"S1"})
        );
        assert_eq!(
            wire(&SetBypassServiceWorker { bypass: true }, s)["params"],
            json!({"bypass":true})
        );
        assert_eq!(
            wire(
                &FetchEnable {
                    patterns: &[RequestPattern { url_pattern: "*" }]
                },
                s
            )["params"],
            json!({"patterns":[{"urlPattern":"*"}]})
        );
        assert_eq!(
            wire(
                &ContinueRequest {
                    request_id: "r",
                    intercept_response: false
                },
                s
            )["params"],
            json!({"requestId":"r"})
        );
        assert_eq!(
            wire(
                &ContinueRequest {
                    request_id: "r",
                    intercept_response: true
                },
                s
            )["params"],
            json!({"requestId":"r","interceptResponse":true})
        );
        assert_eq!(
            wire(
                &FailRequest {
                    request_id: "r",
                    error_reason: ErrorReason::BlockedByClient
                },
                s
            )["params"],
            json!({"requestId":"r","errorReason":"BlockedByClient"})
        );
        assert_eq!(wire(&PageEnable {}, s)["method"], json!("Page.enable"));
        assert_eq!(
            wire(
                &Navigate {
                    url: "https://localhost:1/"
                },
                s
            )["params"],
            json!({"url":"https://localhost:1/"})
        );
        assert_eq!(
            wire(
                &CaptureScreenshot {
                    format: ImageFormat::Png
                },
                s
            )["params"],
            json!({"format":"png"})
        );
    }

    #[test]
    fn the_header_command_carries_the_token_and_debug_hides_it() {
        let h = SetExtraHttpHeaders {
            name: "X-Screengate-Token",
            value: "SECRET\"\\\u{1}",
        };
        let v = wire(&h, Some("S"));
        assert_eq!(v["method"], "Network.setExtraHTTPHeaders");
        assert_eq!(
            v["params"],
            json!({"headers":{"X-Screengate-Token":"SECRET\"\\\u{1}"}})
        );
        assert!(!format!("{h:?}").contains("SECRET"));
        let c = Command {
            id: 1,
            params: &h,
            session_id: None,
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    /// Compiles only for a type that wipes itself on drop.
    fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}

    #[test]
    fn the_frame_is_the_only_buffer_and_wipes_itself() {
        let token = "t".repeat(150);
        let h = SetExtraHttpHeaders {
            name: "X-Screengate-Token",
            value: &token,
        };
        let frame = Command {
            id: u64::MAX,
            params: &h,
            session_id: Some("0123456789ABCDEF0123456789ABCDEF"),
        }
        .encode()
        .unwrap();
        zeroizes_on_drop(&frame);
        // Allocated once at its final size: a buffer that grew while being
        // written would have left its earlier (unwiped) allocation behind,
        // and would show spare capacity.
        assert_eq!(frame.capacity(), frame.len());
        let text = std::str::from_utf8(&frame[..frame.len() - 1]).unwrap();
        assert!(text.contains(&token));
        assert_eq!(frame.last(), Some(&0));
    }

    #[test]
    fn typed_replies_parse() {
        let t: Targets = serde_json::from_value(json!({"targetInfos":[
            {"targetId":"A","type":"page","title":"x","attached":false},
            {"targetId":"B","type":"worker"}]}))
        .unwrap();
        assert_eq!(t.target_infos.len(), 2);
        assert_eq!(t.target_infos[0].kind, "page");
        let a: Attached = serde_json::from_value(json!({"sessionId":"S"})).unwrap();
        assert_eq!(a.session_id, "S");
        let n: Navigated = serde_json::from_value(json!({"frameId":"F"})).unwrap();
        assert_eq!(n.error_text, None);
        let n: Navigated =
            serde_json::from_value(json!({"frameId":"F","errorText":"net::ERR_CERT_INVALID"}))
                .unwrap();
        assert_eq!(n.error_text.as_deref(), Some("net::ERR_CERT_INVALID"));
        let _: Ignored = serde_json::from_value(json!({"anything":[1,2]})).unwrap();
        for bad in [json!({}), json!({"targetInfos":"x"}), json!(null)] {
            assert!(serde_json::from_value::<Targets>(bad).is_err());
        }
        assert!(serde_json::from_value::<Attached>(json!({"sessionId":1})).is_err());
        assert!(serde_json::from_value::<Screenshot>(json!({})).is_err());
    }
}
