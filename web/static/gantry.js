// Gantry's dashboard script: pages that keep themselves up to date, and a log viewer for logs of
// any length. Every page works without it (the server renders everything and, with scripts off,
// pages showing running builds reload themselves).
//
// - Build pages follow GET /api/builds/{id}/events (server-sent events): step headers change
//   colour, durations tick, new log lines appear, the log follows its tail until the reader
//   scrolls up. Each step's log is a virtual list: only the lines in view are in the page, and
//   windows of lines come from GET /api/builds/{id}/lines as the reader scrolls. #L<step>-<n>
//   scrolls to a line and highlights it.
// - The repo page and the repository list follow GET /api/events: a step's cell is updated in
//   place, anything else reloads the page's content (not the page).
//
// Text from the server is only ever set with textContent; the served spans carry CSS classes.
"use strict";

(function () {
  /** Milliseconds as the server spells durations (web/src/format.rs): 350ms, 1.2s, 3m 04s, 2h 05m. */
  function formatDuration(ms) {
    ms = Math.max(0, Math.floor(ms));
    const pad = (n) => String(n).padStart(2, "0");
    if (ms < 1000) return ms + "ms";
    if (ms < 60000) { const tenths = Math.floor(ms / 100); return Math.floor(tenths / 10) + "." + (tenths % 10) + "s"; }
    if (ms < 3600000) return Math.floor(ms / 60000) + "m " + pad(Math.floor((ms % 60000) / 1000)) + "s";
    return Math.floor(ms / 3600000) + "h " + pad(Math.floor((ms % 3600000) / 60000)) + "m";
  }

  function ms(rfc3339) { return rfc3339 ? Date.parse(rfc3339) : null; }

  /** `2024-05-02 09:43:20 UTC`, as the server renders moments (web::format_timestamp). */
  function stamp(rfc3339) { return new Date(Date.parse(rfc3339)).toISOString().slice(0, 19).replace("T", " ") + " UTC"; }

  /** Show a moment the server first rendered as "–", once an event knows it. */
  function setStamp(el, rfc3339) { if (el && rfc3339 && el.textContent.trim() === "–") el.textContent = stamp(rfc3339); }

  /** Durations of running things tick: elements with data-started-ms and no data-finished-ms. */
  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll("[data-started-ms]:not([data-finished-ms])")) {
      if (el.classList.contains("log-view")) continue;
      const running = el.closest(".status-running, [data-status=running], [data-status=provisioning]");
      const head = document.querySelector(".build-head[data-status]");
      const live = running || (el.classList.contains("build-time") && head && ["running", "provisioning"].includes(head.dataset.status));
      if (live) el.textContent = formatDuration(now - Number(el.dataset.startedMs));
    }
  }

  /** Set (or clear) data-started-ms / data-finished-ms from a step's JSON. */
  function setTimes(el, started, finished) {
    if (!el) return;
    if (started != null) el.dataset.startedMs = started; else delete el.dataset.startedMs;
    if (finished != null) el.dataset.finishedMs = finished; else delete el.dataset.finishedMs;
    if (started != null && finished != null) el.textContent = formatDuration(finished - started);
  }

  function replaceStatusClass(el, status) {
    if (!el) return;
    for (const c of Array.from(el.classList)) if (c.startsWith("status-")) el.classList.remove(c);
    el.classList.add("status-" + status);
  }

  const STATUS_LABELS = { timed_out: "timed out" };

  // ---------------------------------------------------------------------------------------------
  // The log viewer.

  const CHUNK = 256;          // lines per window request
  const KEEP_CHUNKS = 64;     // windows kept in memory per step
  const OVERSCAN = 40;        // lines drawn above and below the view
  const MAX_SPACER_PX = 8000000; // browsers cap an element's height; longer logs are scaled

  class LogView {
    constructor(el, build) {
      this.el = el;
      this.build = build;
      this.step = Number(el.dataset.step);
      this.total = Number(el.dataset.lines || 0);
      this.started = el.dataset.startedMs ? Number(el.dataset.startedMs) : null;
      this.chunks = new Map();   // chunk index -> array of line nodes (or undefined while loading)
      this.loading = new Set();
      this.follow = true;
      this.highlight = null;
      this.pending = false;
      this.seed();
      this.scroller = document.createElement("div");
      this.scroller.className = "log-scroll";
      this.scroller.tabIndex = 0;
      this.spacer = document.createElement("div");
      this.spacer.className = "log-spacer";
      this.window = document.createElement("pre");
      this.window.className = "log log-window";
      this.spacer.appendChild(this.window);
      this.scroller.appendChild(this.spacer);
      for (const old of el.querySelectorAll("pre.log, p.log-more")) old.remove();
      el.appendChild(this.scroller);
      this.lineHeight = this.measure();
      this.scroller.addEventListener("scroll", () => {
        const bottom = this.scroller.scrollTop + this.scroller.clientHeight >= this.scroller.scrollHeight - this.lineHeight;
        this.follow = bottom;
        this.schedule();
      }, { passive: true });
      el.hidden = this.total === 0;
      const empty = el.parentElement.querySelector(".log-empty");
      if (empty && this.total > 0) empty.remove();
      this.layout();
      this.scrollToEnd();
      this.render();
    }

    /** The lines the server rendered into the page (the tail) seed the cache. */
    seed() {
      for (const line of this.el.querySelectorAll("pre.log > .line[id]")) {
        const n = Number(line.id.split("-")[1]);
        const node = line.cloneNode(true);
        node.removeAttribute("id");
        node.dataset.n = n;
        this.put(n, node);
      }
    }

    measure() {
      const probe = document.createElement("span");
      probe.className = "line";
      probe.textContent = "x";
      this.window.appendChild(probe);
      const h = probe.getBoundingClientRect().height || 18;
      probe.remove();
      return h;
    }

    put(n, node) {
      const c = Math.floor((n - 1) / CHUNK);
      let chunk = this.chunks.get(c);
      if (!chunk) { chunk = new Array(CHUNK); this.chunks.set(c, chunk); }
      chunk[(n - 1) % CHUNK] = node;
      if (this.chunks.size > KEEP_CHUNKS) this.evict(c);
    }

    evict(keep) {
      for (const c of this.chunks.keys()) {
        if (this.chunks.size <= KEEP_CHUNKS) return;
        if (c !== keep && Math.abs(c - keep) > 2) this.chunks.delete(c);
      }
    }

    get(n) {
      const chunk = this.chunks.get(Math.floor((n - 1) / CHUNK));
      return chunk ? chunk[(n - 1) % CHUNK] : undefined;
    }

    /** A line's element from its JSON (a log event or a window's line). */
    node(line) {
      const row = document.createElement("span");
      row.className = "line stream-" + line.stream;
      row.dataset.n = line.line;
      const a = document.createElement("a");
      a.className = "ln";
      a.href = "#L" + this.step + "-" + line.line;
      a.textContent = line.line;
      const at = document.createElement("span");
      at.className = "at";
      const t = ms(line.at);
      at.textContent = this.started != null ? "+" + formatDuration(t - this.started) : new Date(t).toISOString();
      row.append(a, at);
      if (line.spans) {
        for (const span of line.spans) {
          if (!span.class) { row.append(document.createTextNode(span.text)); continue; }
          const s = document.createElement("span");
          s.className = span.class;
          s.textContent = span.text;
          row.append(s);
        }
      } else {
        row.append(document.createTextNode(line.text));
      }
      return row;
    }

    append(line) {
      this.put(line.line, this.node(line));
      if (line.line > this.total) this.total = line.line;
      if (this.el.hidden) {
        this.el.hidden = false;
        const empty = this.el.parentElement.querySelector(".log-empty");
        if (empty) empty.remove();
      }
      this.schedule();
    }

    scale() { return Math.min(1, MAX_SPACER_PX / Math.max(1, this.total * this.lineHeight)); }

    layout() {
      this.spacer.style.height = Math.max(1, this.total * this.lineHeight * this.scale()) + "px";
    }

    scrollToEnd() { this.scroller.scrollTop = this.scroller.scrollHeight; }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.layout(); if (this.follow) this.scrollToEnd(); this.render(); });
    }

    /** The first line in view (1-based) and the window's top in pixels. */
    position() {
      const top = this.scroller.scrollTop;
      const visible = Math.ceil(this.scroller.clientHeight / this.lineHeight);
      if (this.scale() === 1) return { first: Math.floor(top / this.lineHeight) + 1, top: null, visible };
      const max = Math.max(1, this.scroller.scrollHeight - this.scroller.clientHeight);
      const first = Math.round((top / max) * Math.max(0, this.total - visible)) + 1;
      return { first, top, visible };
    }

    render() {
      if (this.total === 0) return;
      const { first, top, visible } = this.position();
      const from = Math.max(1, first - OVERSCAN);
      const to = Math.min(this.total, first + visible + OVERSCAN);
      const rows = [];
      let missing = false;
      for (let n = from; n <= to; n++) {
        let node = this.get(n);
        if (!node) {
          missing = true;
          this.load(Math.floor((n - 1) / CHUNK));
          node = document.createElement("span");
          node.className = "line loading";
          node.dataset.n = n;
          node.textContent = " ";
        }
        node.classList.toggle("hl", n === this.highlight);
        node.id = "L" + this.step + "-" + n;
        rows.push(node);
      }
      this.window.replaceChildren(...rows);
      const y = top === null ? (from - 1) * this.lineHeight : top - (first - from) * this.lineHeight;
      this.window.style.transform = "translateY(" + Math.max(0, y) + "px)";
      return !missing;
    }

    load(c) {
      if (this.loading.has(c)) return;
      this.loading.add(c);
      const url = "/api/builds/" + this.build + "/lines?step=" + this.step + "&from=" + (c * CHUNK + 1) + "&limit=" + CHUNK;
      fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((window) => {
          for (const line of window.lines) if (!this.get(line.line)) this.put(line.line, this.node(line));
          if (window.total > this.total) this.total = window.total;
          this.schedule();
        })
        .catch(() => {})
        .finally(() => this.loading.delete(c));
    }

    /** Scroll to line n and highlight it. */
    jumpTo(n) {
      this.follow = false;
      this.highlight = n;
      this.layout();
      const visible = Math.ceil(this.scroller.clientHeight / this.lineHeight);
      const target = Math.max(0, n - 1 - Math.floor(visible / 3));
      if (this.scale() === 1) {
        this.scroller.scrollTop = target * this.lineHeight;
      } else {
        const max = Math.max(1, this.scroller.scrollHeight - this.scroller.clientHeight);
        this.scroller.scrollTop = (target / Math.max(1, this.total - visible)) * max;
      }
      this.render();
      this.el.closest("details").scrollIntoView({ block: "start" });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The build page.

  function buildPage(head) {
    const build = head.dataset.build;
    const views = new Map();
    const viewOf = (step) => {
      if (views.has(step)) return views.get(step);
      const el = document.querySelector('.log-view[data-step="' + step + '"]');
      if (!el) return null;
      const view = new LogView(el, build);
      views.set(step, view);
      return view;
    };
    // A step's log becomes a viewer when it is first opened.
    for (const details of document.querySelectorAll("details.step[id^=step-]")) {
      const step = Number(details.id.slice(5));
      if (details.open) viewOf(step);
      details.addEventListener("toggle", () => { if (details.open) { const v = viewOf(step); if (v) v.schedule(); } });
    }

    function goToHash() {
      const m = /^#L(\d+)-(\d+)$/.exec(location.hash);
      if (!m) return;
      const details = document.getElementById("step-" + m[1]);
      if (!details) return;
      details.open = true;
      const view = viewOf(Number(m[1]));
      if (view) view.jumpTo(Number(m[2]));
    }
    window.addEventListener("hashchange", goToHash);
    goToHash();

    if (!["queued", "provisioning", "running"].includes(head.dataset.status)) return;
    let reportsChanged = false;
    const source = new EventSource("/api/builds/" + build + "/events");
    source.addEventListener("log", (e) => {
      const line = JSON.parse(e.data);
      const details = document.getElementById("step-" + line.step);
      if (!details) return;
      const view = views.get(line.step) || (details.open ? viewOf(line.step) : null);
      if (view) view.append(line);
      else {
        const el = details.querySelector(".log-view");
        if (el) el.dataset.lines = Math.max(Number(el.dataset.lines || 0), line.line);
      }
    });
    source.addEventListener("step", (e) => {
      const step = JSON.parse(e.data);
      const details = document.getElementById("step-" + step.index);
      if (!details) { source.close(); location.reload(); return; }
      replaceStatusClass(details, step.status);
      const badge = details.querySelector("summary .badge");
      replaceStatusClass(badge, step.status);
      if (badge) badge.textContent = STATUS_LABELS[step.status] || step.status;
      const exit = details.querySelector(".step-exit");
      if (exit) exit.textContent = step.exit_code != null ? "exit " + step.exit_code : "";
      setTimes(details.querySelector(".step-time"), ms(step.started_at), ms(step.finished_at));
      const log = details.querySelector(".log-view");
      if (log && step.started_at) log.dataset.startedMs = ms(step.started_at);
      const view = views.get(step.index);
      if (view && step.started_at) view.started = ms(step.started_at);
      // A failing step opens, as the page does for a failed build.
      if ((step.status === "failed" || step.status === "timed_out") && !details.open) details.open = true;
      if (step.status === "running" && !details.open && step.kind === "stage") details.open = true;
    });
    source.addEventListener("host", (e) => {
      const host = JSON.parse(e.data);
      const row = document.querySelector('tr[data-host="' + CSS.escape(host.role) + '"]');
      if (!row) return;
      const badge = row.querySelector(".badge");
      const tone = { torn_down: "passed", teardown_failed: "failed", provisioned: "running" }[host.state] || "pending";
      replaceStatusClass(badge, tone);
      if (badge) badge.textContent = host.state.replace("_", " ");
      const address = row.children[3];
      if (address && host.address) address.firstElementChild.textContent = host.address;
      setStamp(row.querySelector(".host-provisioned"), host.provisioned_at);
      setStamp(row.querySelector(".host-torn-down"), host.torn_down_at);
    });
    source.addEventListener("report", () => { reportsChanged = true; });
    source.addEventListener("build", (e) => {
      const b = JSON.parse(e.data);
      head.dataset.status = b.status;
      const badge = head.querySelector(".badge");
      replaceStatusClass(badge, b.status);
      if (badge) badge.textContent = b.status;
      document.title = document.title.replace(/\((\w+)\)/, "(" + b.status + ")");
      const time = document.querySelector(".build-time");
      setTimes(time, ms(b.started_at), ms(b.finished_at));
      setStamp(document.querySelector(".build-started"), b.started_at);
      setStamp(document.querySelector(".build-finished"), b.finished_at);
      if (!["queued", "provisioning", "running"].includes(b.status)) {
        source.close();
        // A final build has nothing to cancel; its re-run button comes with the next load.
        const cancel = document.querySelector('form[action$="/cancel"]');
        if (cancel) cancel.remove();
        const live = document.querySelector(".topbar .live");
        if (live) live.remove();
        // Reports and the error banner are rendered by the server: show them.
        if (reportsChanged || b.error) location.reload();
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // The repo page and the repository list.

  function feedPage(marker) {
    let timer = null;
    const refresh = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const active = document.activeElement;
        const main = document.querySelector("main");
        // Never swap a form out from under someone typing in it.
        if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
          active.addEventListener("blur", refresh, { once: true });
          return;
        }
        fetch(location.href, { headers: { accept: "text/html" }, credentials: "same-origin" })
          .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
          .then((html) => {
            const next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
            if (next) document.querySelector("main").replaceWith(document.adoptNode(next));
            tick();
          })
          .catch(() => {});
      }, 300);
    };
    // The feed starts a moment after the page has loaded (and the page is reloaded once then, to
    // catch up): a page that never stops loading is never "loaded" for tools that wait for that,
    // such as headless Chromium's --dump-dom.
    setTimeout(() => follow(marker, refresh), FEED_START_DELAY_MS);
  }

  const FEED_START_DELAY_MS = 2500;

  function follow(marker, refresh) {
    const source = new EventSource(marker.dataset.feed);
    source.addEventListener("open", refresh);
    source.addEventListener("build", refresh);
    source.addEventListener("step", (e) => {
      const step = JSON.parse(e.data);
      const cell = document.querySelector('td.cell[data-build="' + step.build + '"][data-step="' + step.index + '"]');
      if (!cell) { refresh(); return; }
      replaceStatusClass(cell, step.status);
      const label = STATUS_LABELS[step.status] || step.status;
      cell.title = step.name + ": " + label;
      const status = cell.querySelector(".cell-status");
      if (status) status.textContent = label;
      setTimes(cell.querySelector(".cell-time"), ms(step.started_at), ms(step.finished_at));
      tick();
    });
  }

  function start() {
    const head = document.querySelector(".build-head[data-build]");
    if (head) buildPage(head);
    const feed = document.querySelector("[data-feed]");
    if (feed) feedPage(feed);
    setInterval(tick, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
