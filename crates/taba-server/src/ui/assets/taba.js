// taba web UI script (no framework, no build step).
// 1. Live updates: follows /ui/events (the API's event stream, filtered by
//    the session's token) and fetches the page's live region again
//    (X-Taba-Fragment: 1) at most once a second when an event arrives.
// 2. Logs: follows /ui/allocs/{id}/logs into <pre id="logs">, resuming at
//    the byte offset it reached when the connection drops.
"use strict";
(function () {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const status = document.getElementById("live-status");
  const setStatus = (s, why) => { if (status) { status.className = s; status.title = why; } };

  // Read a fetch response body line by line (or chunk by chunk).
  async function eachChunk(resp, onText) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onText(dec.decode(value, { stream: true }), value.length);
    }
  }

  async function errorText(resp) {
    try { const j = await resp.json(); return j.error ? j.error.message : resp.statusText; }
    catch (_) { return resp.status + " " + resp.statusText; }
  }

  // ---- live region ----
  const live = document.getElementById("live");
  let pending = false, last = 0;
  async function refresh() {
    pending = false;
    last = Date.now();
    const a = document.activeElement;
    if (a && live.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA")) {
      return; // someone is typing: do not replace the form under them
    }
    try {
      const r = await fetch(location.href, { headers: { "X-Taba-Fragment": "1" }, credentials: "same-origin" });
      if (r.redirected || !r.ok) { return; }
      live.innerHTML = await r.text();
      document.body.dataset.refreshed = String(Date.now());
    } catch (_) { /* the next event tries again */ }
  }
  function schedule() {
    if (pending) return;
    pending = true;
    setTimeout(refresh, Math.max(0, 1000 - (Date.now() - last)));
  }
  async function follow(topics) {
    for (let attempt = 0; attempt < 500; attempt++) {
      try {
        const r = await fetch("/ui/events" + (topics ? "?" + topics : ""), { credentials: "same-origin" });
        if (!r.ok) { setStatus("off", await errorText(r)); await sleep(5000); continue; }
        setStatus("on", "live: following the event stream");
        let buf = "";
        await eachChunk(r, (text) => {
          buf += text;
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i).trim();
            buf = buf.slice(i + 1);
            if (!line || line.startsWith('{"heartbeat"')) continue;
            if (line.startsWith('{"end"')) { setStatus("off", line); continue; }
            schedule();
          }
        });
      } catch (_) { /* reconnect below */ }
      setStatus("off", "event stream ended; reconnecting");
      await sleep(2000);
    }
  }
  if (live && live.dataset.topics) follow(live.dataset.topics === "*" ? "" : live.dataset.topics);

  // ---- logs ----
  const pre = document.getElementById("logs");
  const MAX_SHOWN = 200000;
  async function logs() {
    let offset = 0;
    for (let attempt = 0; attempt < 100; attempt++) {
      try {
        const r = await fetch(pre.dataset.src + "&offset=" + offset, { credentials: "same-origin" });
        if (!r.ok) { pre.dataset.error = await errorText(r); pre.textContent += "[" + pre.dataset.error + "]\n"; return; }
        pre.dataset.state = "following";
        await eachChunk(r, (text, n) => {
          offset += n;
          const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          let t = pre.textContent + text;
          if (t.length > MAX_SHOWN) t = t.slice(t.length - MAX_SHOWN);
          pre.textContent = t;
          if (stick) pre.scrollTop = pre.scrollHeight;
        });
      } catch (_) { /* resume at offset */ }
      pre.dataset.state = "reconnecting";
      await sleep(2000);
    }
  }
  if (pre && pre.dataset.src) logs();
})();
