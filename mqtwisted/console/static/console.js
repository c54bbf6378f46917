"use strict";
/* The console's core: the API with the session's CSRF token, pages by URL hash, small helpers. */
const Console = {
  csrf: "", user: "", pages: {}, current: null, timer: null,

  async api(method, path, body) {
    const opts = {method, headers: {"Accept": "application/json"}, credentials: "same-origin"};
    if (method !== "GET") opts.headers["X-CSRF-Token"] = Console.csrf;
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(path, opts);
    if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
    return data;
  },

  register(name, page) { Console.pages[name] = page; },

  show() {
    const name = (location.hash || "#overview").slice(1).split("/")[0];
    const page = Console.pages[name] ? name : "overview";
    if (Console.current && Console.pages[Console.current].leave) Console.pages[Console.current].leave();
    Console.current = page;
    document.querySelectorAll(".page").forEach(s => { s.hidden = s.id !== `page-${page}`; });
    document.querySelectorAll(".sidebar a").forEach(a => a.classList.toggle("active", a.dataset.page === page));
    document.getElementById("page-title").textContent = document.querySelector(`.sidebar a[data-page="${page}"]`).textContent;
    clearInterval(Console.timer);
    document.getElementById("toast").hidden = true;
    const p = Console.pages[page];
    const tick = () => p.refresh().then(() => Console.live(true), e => { Console.live(false); Console.banner(e.message); });
    if (p.enter) p.enter();
    tick();
    if (p.every) Console.timer = setInterval(tick, p.every);
  },

  live(ok) {
    document.getElementById("live-dot").classList.toggle("on", ok);
    if (ok) Console.banner("");
  },
  banner(text) { const b = document.getElementById("banner"); b.textContent = text; b.hidden = !text; },
  toast(text, error) {
    const t = document.getElementById("toast");
    t.textContent = text; t.classList.toggle("error", !!error); t.hidden = false;
    clearTimeout(Console.toastTimer); Console.toastTimer = setTimeout(() => { t.hidden = true; }, 3500);
  },
  confirm(text, label) {
    const back = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-yes").textContent = label || "Confirm";
    back.hidden = false;
    return new Promise(resolve => {
      const done = ok => { back.hidden = true; yes.onclick = no.onclick = null; resolve(ok); };
      const yes = document.getElementById("confirm-yes"), no = document.getElementById("confirm-no");
      yes.onclick = () => done(true); no.onclick = () => done(false);
      yes.focus();
    });
  },
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
function fmtNum(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString(); }
function fmtRateValue(v) { return v === undefined ? "–" : v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0); }
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString([], {hour12: false}) : "–"; }
function fmtClock(t) { return t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "–"; }
function fmtDuration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}
function timeOf(v) {
  if (v === null || v === undefined || v === "") return null;
  if (typeof v === "number") return v;
  const t = Date.parse(String(v).replace(" ", "T") + (/[zZ+]/.test(String(v).slice(10)) ? "" : "Z"));
  return isNaN(t) ? null : t / 1000;
}
function badge(text, kind) { return el("span", {class: `badge ${kind || text || ""}`, text: text || "–"}); }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

async function startConsole() {
  try {
    const s = await fetch("/console/session", {credentials: "same-origin"}).then(r => r.json());
    if (!s.csrf) { location.href = "/login"; return; }
    Console.csrf = s.csrf; Console.user = s.user;
    document.getElementById("who").textContent = s.user;
    document.getElementById("logout-form").hidden = !s.login;
  } catch (e) { Console.banner("The MTA does not answer: " + e.message); }
  document.getElementById("logout-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    await fetch("/logout", {method: "POST", headers: {"X-CSRF-Token": Console.csrf}, credentials: "same-origin"});
    location.href = "/login";
  });
  window.addEventListener("hashchange", Console.show);
  Console.show();
}
document.addEventListener("DOMContentLoaded", startConsole);
