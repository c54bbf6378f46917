"use strict";
const query = new URLSearchParams(location.search);
if (query.has("failed")) {
  document.getElementById("login-error").hidden = false;
}
if (query.has("locked")) {
  const s = Math.max(1, Number(query.get("locked")) || 0);
  document.getElementById("locked-for").textContent =
    s >= 90 ? `${Math.ceil(s / 60)} more minutes` : `${s} more second${s === 1 ? "" : "s"}`;
  document.getElementById("login-locked").hidden = false;
}
