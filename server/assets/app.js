// screengate demo display app. Connects to the gateway's WebSocket on its
// own origin; the session token is added to the handshake by the launcher
// (CDP, out of band): this script never sees it. Reconnects with backoff.
"use strict";
(function () {
  const path = document.querySelector('meta[name="screengate-ws-path"]').content;
  const $ = (id) => document.getElementById(id);
  let ws = null, backoff = 250, sessions = 0, rx = 0, tx = 0;

  function setState(s) {
    document.body.dataset.state = s;
    $("state").textContent = s;
    $("state").className = "pill " + s;
  }
  function log(dir, text) {
    const li = document.createElement("li");
    li.className = dir;
    li.textContent = (dir === "in" ? "← " : "→ ") + text;
    const ol = $("log");
    ol.insertBefore(li, ol.firstChild);
    while (ol.childNodes.length > 50) ol.removeChild(ol.lastChild);
  }
  function connect() {
    setState("connecting");
    ws = new WebSocket("wss://" + location.host + path);
    ws.onopen = () => {
      backoff = 250; sessions++;
      $("sessions").textContent = sessions;
      setState("connected");
      send("hello from the display");
    };
    ws.onmessage = (ev) => {
      rx++; $("rx").textContent = rx;
      const text = typeof ev.data === "string" ? ev.data : "[binary]";
      try {
        const m = JSON.parse(text);
        if (m.type === "status") { $("assistant").textContent = m.state + " (#" + m.seq + ")"; return; }
      } catch (_) { /* not JSON: an echo */ }
      document.body.dataset.lastEcho = text;
      log("in", text);
    };
    ws.onclose = (ev) => {
      setState("disconnected");
      document.body.dataset.lastClose = String(ev.code);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 2000);
    };
  }
  function send(text) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(text); tx++; $("tx").textContent = tx; log("out", text); }
  }
  $("send").addEventListener("submit", (e) => { e.preventDefault(); send($("text").value); $("text").value = ""; });
  connect();
})();
