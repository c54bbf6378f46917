"use strict";
/* One object per page: refresh() fetches and draws; enter()/leave() when shown and hidden. */
const KINDS = [["received", "--received"], ["delivered", "--ok"], ["deferred", "--warn"], ["failed", "--bad"]];

Console.register("overview", {
  every: 1000,
  charts: null,
  enter() {
    if (!this.charts) {
      const series = KINDS.map(([key, color]) => ({key, color}));
      this.charts = {short: new LineChart(document.getElementById("chart-short"), series),
                     long: new LineChart(document.getElementById("chart-long"), series)};
      for (const id of ["legend-short", "legend-long"])
        document.getElementById(id).replaceChildren(...KINDS.map(([k]) => el("span", {class: k, text: k})));
      window.addEventListener("resize", () => { this.charts.short.draw(); this.charts.long.draw(); });
    }
  },
  async refresh() {
    const o = await Console.api("GET", "/v1/overview");
    const s = o.series, last = s.short.slice(-5);
    KINDS.forEach(([k], i) => {
      const avg = last.length ? last.reduce((a, p) => a + p[i + 1], 0) / last.length : 0;
      document.getElementById(`t-${k}`).textContent = fmtRateValue(avg);
      document.getElementById(`n-${k}`).textContent = fmtNum(o.totals[k]);
    });
    this.charts.short.set(s.short, 300);
    this.charts.long.set(s.long, 3600);
    const queues = Object.entries(o.queues).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const top = Math.max(1, ...queues.map(q => q[1]));
    fill(document.querySelector("#ov-queues tbody"), queues.map(([name, n]) => {
      const bar = el("div", {class: "bar"}, el("i")); bar.firstChild.style.width = `${(100 * n) / top}%`;
      return el("tr", {}, el("td", {}, el("a", {href: `#queues/${encodeURIComponent(name)}`, text: name})),
                el("td", {class: "num", text: fmtNum(n)}), el("td", {}, bar));
    }));
    if (o.queue_error) Console.banner("Queue unavailable: " + o.queue_error);
    const facts = (id, pairs) => document.getElementById(id).replaceChildren(
      ...pairs.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v})]));
    facts("ov-conn", [["SMTP in, open", fmtNum(o.connections.in)], ["SMTP in, since start", fmtNum(o.connections.in_total)],
                      ["Outbound, open", fmtNum(o.connections.out)], ["Waiting for a connection", fmtNum(o.connections.waiting)]]);
    facts("ov-node", [["Host", o.hostname], ["Version", o.version], ["Uptime", fmtDuration(o.uptime)],
                      ["Backend", o.backend], ["Nodes delivering", o.nodes === null ? "unknown" : fmtNum(o.nodes)],
                      ["State", o.shutting_down ? "shutting down" : "running"]]);
    document.getElementById("host").textContent = o.hostname;
    document.getElementById("node-info").textContent = `mqmta ${o.version} · up ${fmtDuration(o.uptime)}`;
  },
});

Console.register("destinations", {
  every: 2000, rows: [], sort: {key: "site", dir: 1},
  enter() {
    if (this.bound) return;
    this.bound = true;
    document.getElementById("dest-filter").addEventListener("input", () => this.draw());
    document.querySelectorAll("#dest-table th[data-key]").forEach(th => th.addEventListener("click", () => {
      const key = th.dataset.key;
      this.sort = {key, dir: this.sort.key === key ? -this.sort.dir : (key === "site" || key === "source" ? 1 : -1)};
      this.draw();
    }));
  },
  async refresh() { this.rows = (await Console.api("GET", "/v1/destinations")).destinations; this.draw(); },
  draw() {
    const q = document.getElementById("dest-filter").value.trim().toLowerCase();
    const {key, dir} = this.sort;
    const rows = this.rows.filter(r => !q || [r.site, r.source, ...r.domains].join(" ").toLowerCase().includes(q))
      .sort((a, b) => { const x = a[key] ?? "", y = b[key] ?? ""; return (x < y ? -1 : x > y ? 1 : 0) * dir; });
    document.querySelectorAll("#dest-table th[data-key]").forEach(th => {
      th.classList.toggle("sorted-asc", th.dataset.key === key && dir > 0);
      th.classList.toggle("sorted-desc", th.dataset.key === key && dir < 0);
    });
    document.getElementById("dest-count").textContent = `${rows.length} of ${this.rows.length}`;
    document.getElementById("dest-empty").hidden = this.rows.length > 0;
    fill(document.querySelector("#dest-table tbody"), rows.map(r => el("tr", {},
      el("td", {}, el("div", {class: "mono", text: r.site}),
         el("div", {class: "muted", text: r.domains.filter(d => d !== r.site).slice(0, 4).join(", ")})),
      el("td", {class: "mono", text: r.source || "any"}),
      el("td", {class: "num"}, `${r.connections} / ${r.connection_limit ?? "∞"}`, meter(r.connections, r.connection_limit)),
      el("td", {class: "num"}, `${fmtRateValue(r.messages_per_minute)} / ${r.max_message_rate ?? "∞"}`,
         meter(r.messages_per_minute, r.message_rate_per_minute)),
      el("td", {class: "num", text: fmtNum(r.pending)}),
      el("td", {class: "num", text: fmtNum(r.delivered)}),
      el("td", {class: "num", text: fmtNum(r.deferred)}),
      el("td", {class: "num", text: fmtNum(r.failed)}),
      el("td", {}, r.suspended_until ? el("div", {}, badge("suspended", "warn"), " ", fmtClock(r.suspended_until),
                                          el("div", {class: "muted wrap", text: r.suspended_because || ""})) : "–"),
      el("td", {class: "wrap"}, ...r.replies.slice(0, 3).map(p => el("div", {class: "reply"},
         badge(p.classification || p.result), " ", el("span", {class: "mono", text: `${p.code ?? ""} ${p.status ?? ""}`}),
         " ", p.text.slice(0, 90)))),
    )));
  },
});
function meter(value, limit) {
  if (!limit) return null;
  const f = Math.min(1, value / limit), bar = el("div", {class: `bar ${f >= 1 ? "full" : f >= 0.8 ? "hot" : ""}`}, el("i"));
  bar.firstChild.style.width = `${100 * f}%`;
  return bar;
}

Console.register("queues", {
  every: 5000, queue: "outbox", offset: 0, limit: 50, total: 0, names: [],
  enter() {
    const parts = location.hash.slice(1).split("/");
    if (parts[1]) { this.queue = decodeURIComponent(parts[1]); this.offset = 0; }
    if (this.bound) return;
    this.bound = true;
    document.getElementById("queue-search-form").addEventListener("submit", ev => { ev.preventDefault(); this.offset = 0; this.refresh(); });
    document.getElementById("queue-prev").addEventListener("click", () => { this.offset = Math.max(0, this.offset - this.limit); this.refresh(); });
    document.getElementById("queue-next").addEventListener("click", () => { this.offset += this.limit; this.refresh(); });
    document.getElementById("doc-close").addEventListener("click", () => { document.getElementById("doc-drawer").hidden = true; });
    document.querySelectorAll("#doc-drawer [data-action]").forEach(b => b.addEventListener("click", () => this.act(b.dataset.action)));
  },
  leave() { document.getElementById("doc-drawer").hidden = true; },
  async refresh() {
    const [queues, page] = await Promise.all([
      Console.api("GET", "/v1/queues"),
      Console.api("GET", `/v1/queues/${encodeURIComponent(this.queue)}?offset=${this.offset}&limit=${this.limit}` +
                         `&search=${encodeURIComponent(document.getElementById("queue-search").value.trim())}`)]);
    this.names = queues.queues.map(q => q.name);
    document.getElementById("queue-tabs").replaceChildren(...queues.queues.map(q => el("button", {
      class: q.name === this.queue ? "active" : "", "data-queue": q.name,
      onclick: () => { this.queue = q.name; this.offset = 0; location.hash = `#queues/${encodeURIComponent(q.name)}`; this.refresh(); },
    }, q.name, el("span", {class: "count", text: fmtNum(q.count)}))));
    this.total = page.total;
    const end = Math.min(page.total, this.offset + page.documents.length);
    document.getElementById("queue-range").textContent = page.total ?
      `${fmtNum(this.offset + 1)}–${fmtNum(end)} of ${fmtNum(page.total)}${page.partial ? " (first 10,000 scanned)" : ""}` : "";
    document.getElementById("queue-prev").disabled = this.offset === 0;
    document.getElementById("queue-next").disabled = end >= page.total;
    document.getElementById("queue-empty").hidden = page.documents.length > 0;
    fill(document.querySelector("#queue-table tbody"), page.documents.map(({id, document: d}) => {
      const results = Array.isArray(d.results) ? d.results : [], last = results[results.length - 1];
      return el("tr", {onclick: () => this.open(id), "data-id": id},
        el("td", {class: "mono", text: id}), el("td", {class: "nowrap", text: d.recipient || ""}),
        el("td", {class: "nowrap", text: d.envelope ?? ""}),
        el("td", {class: "num", text: results.length}),
        el("td", {class: "wrap"}, last ? el("span", {}, badge(last.classification || last.result), " ",
                                            `${last.code ?? ""} ${(last.description || "").slice(0, 60)}`) : "–"),
        el("td", {class: "nowrap", text: fmtTime(timeOf(d.nextattempt))}),
        el("td", {class: "nowrap", text: fmtTime(timeOf(d.received))}));
    }));
  },
  async open(id) {
    const d = await Console.api("GET", `/v1/queues/${encodeURIComponent(this.queue)}/${encodeURIComponent(id)}`);
    this.doc = {id, queue: this.queue};
    const mime = typeof d.mime === "string" ? d.mime : "";
    const cut = mime.search(/\r?\n\r?\n/);
    const shown = Object.assign({}, d);
    if (mime) shown.mime = `(${mime.length.toLocaleString()} characters)`;
    document.getElementById("doc-title").textContent = `${this.queue} / ${id} — ${d.recipient || ""}`;
    document.getElementById("doc-headers").textContent = mime ? (cut >= 0 ? mime.slice(0, cut) : mime) : "(no mime)";
    document.getElementById("doc-json").textContent = JSON.stringify(shown, null, 2);
    document.getElementById("doc-move-to").replaceChildren(
      ...this.names.filter(n => n !== this.queue).map(n => el("option", {value: n, text: n})));
    document.getElementById("doc-drawer").hidden = false;
  },
  async act(action) {
    const {id, queue} = this.doc, base = `/v1/queues/${encodeURIComponent(queue)}/${encodeURIComponent(id)}`;
    const to = document.getElementById("doc-move-to").value;
    const texts = {retry: [`Try ${id} again now?`, "Retry now"], bounce: [`Fail ${id} for good and send a bounce to its sender?`, "Bounce"],
                   move: [`Move ${id} from ${queue} to ${to}?`, "Move"], delete: [`Delete ${id} from ${queue}? This cannot be undone.`, "Delete"]};
    if (!await Console.confirm(...texts[action])) return;
    try {
      if (action === "delete") await Console.api("DELETE", base);
      else if (action === "move") await Console.api("POST", `${base}/move`, {to});
      else await Console.api("POST", `${base}/${action}`);
      Console.toast({retry: "Queued for a retry now", bounce: "Bounced", move: `Moved to ${to}`, delete: "Deleted"}[action]);
      document.getElementById("doc-drawer").hidden = true;
      this.refresh();
    } catch (e) { Console.toast(e.message, true); }
  },
});

const CLASSES = ["accepted", "invalid-recipient", "bad-domain", "mailbox-full", "message-too-large", "spam-block", "policy",
                 "rate-limited", "greylisted", "tls-failure", "dns-failure", "timeout", "connection-failure", "other"];
Console.register("log", {
  source: null, paused: false, rows: 0,
  enter() {
    if (!this.bound) {
      this.bound = true;
      const cls = document.getElementById("log-class");
      CLASSES.forEach(c => cls.append(el("option", {value: c, text: c})));
      for (const id of ["log-domain", "log-class", "log-result"])
        document.getElementById(id).addEventListener("change", () => this.connect());
      document.getElementById("log-pause").addEventListener("click", () => {
        this.paused = !this.paused;
        document.getElementById("log-pause").textContent = this.paused ? "Resume" : "Pause";
      });
    }
    this.connect();
  },
  leave() { if (this.source) this.source.close(); this.source = null; },
  async refresh() {},
  connect() {
    this.leave();
    const q = new URLSearchParams();
    const domain = document.getElementById("log-domain").value.trim();
    if (domain) q.set("domain", domain);
    if (document.getElementById("log-class").value) q.set("class", document.getElementById("log-class").value);
    if (document.getElementById("log-result").value) q.set("result", document.getElementById("log-result").value);
    document.querySelector("#log-table tbody").replaceChildren();
    this.rows = 0;
    document.getElementById("log-empty").hidden = false;
    const state = document.getElementById("log-state");
    this.source = new EventSource(`/console/events?${q}`);
    this.source.onopen = () => { state.textContent = "live"; Console.live(true); };
    this.source.onerror = () => { state.textContent = "reconnecting…"; Console.live(false); };
    this.source.addEventListener("dropped", ev => { state.textContent = `live (${ev.data} not shown: too many)`; });
    this.source.onmessage = ev => { if (!this.paused) this.add(JSON.parse(ev.data)); };
  },
  add(a) {
    const body = document.querySelector("#log-table tbody");
    document.getElementById("log-empty").hidden = true;
    body.prepend(el("tr", {},
      el("td", {class: "mono", text: fmtClock(a.time)}), el("td", {class: "nowrap", text: a.recipient || ""}),
      el("td", {class: "mono", text: a.domain}), el("td", {class: "mono", text: a.source || "any"}),
      el("td", {text: a.state}), el("td", {}, badge(a.result)),
      el("td", {class: "wrap"}, el("span", {class: "mono", text: `${a.code ?? ""} ${a.status ?? ""} `}), (a.description || "").slice(0, 140)),
      el("td", {}, badge(a.classification)), el("td", {}, badge(a.outcome))));
    while (body.children.length > 500) body.lastChild.remove();
  },
});

Console.register("plugins", {
  every: 3000,
  async refresh() {
    const p = await Console.api("GET", "/v1/plugins");
    const milters = [...p.milters.in.map(m => `${m} (inbound)`), ...p.milters.out.map(m => `${m} (before delivery)`)];
    document.getElementById("plugin-list").replaceChildren(
      p.loaded.length ? el("div", {}, ...p.loaded.map(n => el("span", {class: "pill", text: n})), " ",
                           el("span", {class: "muted", text: `from ${p.directory} · ${p.threads.threads} threads, ${p.threads.busy} busy`}))
                      : el("div", {class: "muted", text: "No plugins loaded (--plugin-directory is not set or empty)."}),
      el("div", {class: "milters"}, el("strong", {text: "Milters: "}),
         milters.length ? milters.join(", ") : el("span", {class: "muted", text: "none (--milters, --milters-out)"})));
    document.getElementById("hook-empty").hidden = p.hooks.length > 0;
    fill(document.querySelector("#hook-table tbody"), p.hooks.map(h => el("tr", {},
      el("td", {text: h.plugin}), el("td", {class: "mono", text: h.hook}), el("td", {class: "num", text: fmtNum(h.calls)}),
      el("td", {class: "num", text: `${(h.seconds * 1000).toFixed(1)} ms`}),
      el("td", {class: "num", text: `${(h.mean_seconds * 1000).toFixed(3)} ms`}))));
  },
});

Console.register("config", {
  options: {},
  enter() {
    if (this.bound) return;
    this.bound = true;
    document.getElementById("config-filter").addEventListener("input", () => this.draw());
  },
  async refresh() { this.options = (await Console.api("GET", "/v1/config")).options; this.draw(); },
  draw() {
    const q = document.getElementById("config-filter").value.trim().toLowerCase();
    fill(document.querySelector("#config-table tbody"), Object.entries(this.options)
      .filter(([k, v]) => !q || k.includes(q) || JSON.stringify(v).toLowerCase().includes(q))
      .map(([k, v]) => el("tr", {}, el("td", {class: "mono", text: k}),
        el("td", {class: "mono wrap", text: v === null || v === "" || (Array.isArray(v) && !v.length) ? "—" : Array.isArray(v) ? v.join(", ") : String(v)}))));
  },
});

/* Pauses and suppressions: the forms send what is filled in; empty fields are left out. */
function formBody(form, numbers) {
  const body = {};
  for (const [k, v] of new FormData(form)) {
    const text = String(v).trim();
    if (text) body[k] = numbers.includes(k) && /^\d+$/.test(text) ? Number(text) : text;
  }
  return body;
}
Console.register("holds", {
  every: 3000,
  enter() {
    if (this.bound) return;
    this.bound = true;
    const pauseForm = document.getElementById("pause-form"), suppressForm = document.getElementById("suppress-form");
    pauseForm.addEventListener("submit", async ev => {
      ev.preventDefault();
      const body = formBody(pauseForm, []);
      if (!body.source && !body.domain && !body.tag &&
          !await Console.confirm("No sending IP, domain or tag: this pauses every delivery. Go on?", "Pause everything")) return;
      this.add("/v1/pauses", body, pauseForm, p => `Paused ${describePause(p)}`);
    });
    suppressForm.addEventListener("submit", ev => {
      ev.preventDefault();
      this.add("/v1/suppressions", formBody(suppressForm, ["code"]), suppressForm, s => `Suppressed ${s.pattern}`);
    });
  },
  async add(path, body, form, said) {
    try {
      const made = await Console.api("POST", path, body);
      form.reset();
      Console.toast(said(made));
      this.refresh();
    } catch (e) { Console.toast(e.message, true); }
  },
  async remove(path, question, label, said) {
    if (!await Console.confirm(question, label)) return;
    try {
      await Console.api("DELETE", path);
      Console.toast(said);
      this.refresh();
    } catch (e) { Console.toast(e.message, true); }
  },
  async refresh() {
    const [{pauses}, {suppressions}] = await Promise.all([Console.api("GET", "/v1/pauses"), Console.api("GET", "/v1/suppressions")]);
    const any = v => v ? el("span", {class: "mono", text: v}) : el("span", {class: "muted", text: "any"});
    const until = t => t ? fmtTime(t) : el("span", {class: "muted", text: "until removed"});
    document.getElementById("pause-count").textContent = pauses.length ? `${pauses.length} in force` : "";
    document.getElementById("pause-empty").hidden = pauses.length > 0;
    fill(document.querySelector("#pause-table tbody"), pauses.map(p => el("tr", {"data-id": p.id},
      el("td", {}, any(p.source)), el("td", {}, any(p.domain)), el("td", {}, any(p.tag)),
      el("td", {class: "nowrap"}, until(p.until)), el("td", {class: "wrap", text: p.reason || "–"}),
      el("td", {class: "nowrap muted", text: fmtTime(p.created)}),
      el("td", {class: "num"}, el("button", {class: "btn btn-small", text: "Remove", onclick: () => this.remove(
        `/v1/pauses/${encodeURIComponent(p.id)}`, `End the pause of ${describePause(p)} now? Its messages go out at once.`,
        "End pause", "Pause removed")})))));
    document.getElementById("suppress-count").textContent = suppressions.length ? `${suppressions.length} on the list` : "";
    document.getElementById("suppress-empty").hidden = suppressions.length > 0;
    fill(document.querySelector("#suppress-table tbody"), suppressions.map(s => el("tr", {"data-pattern": s.pattern},
      el("td", {class: "mono", text: s.pattern}),
      el("td", {class: "wrap"}, badge(String(s.code), "bad"), " ", el("span", {class: "mono", text: s.enhanced}), " ", s.text),
      el("td", {class: "nowrap"}, until(s.until)), el("td", {class: "nowrap muted", text: fmtTime(s.created)}),
      el("td", {class: "num"}, el("button", {class: "btn btn-small", text: "Remove", onclick: () => this.remove(
        `/v1/suppressions/${encodeURIComponent(s.pattern)}`, `Take ${s.pattern} off the suppression list? Mail to it is sent again.`,
        "Remove", `${s.pattern} removed`)})))));
  },
});
function describePause(p) {
  const parts = [p.source && `from ${p.source}`, p.domain && `to ${p.domain}`, p.tag && `tagged ${p.tag}`].filter(Boolean);
  return parts.length ? parts.join(", ") : "every delivery";
}
