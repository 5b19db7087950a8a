// The overview's auto-refresh: every element with a data-metric attribute takes the
// value of the same key in /dashboard/overview.json, every few seconds. A value that
// changed flashes once. An expired session goes back to the login page.
(function () {
  "use strict";
  var elements = document.querySelectorAll("[data-metric]");
  if (!elements.length) return;
  var PERIOD_MS = 3000;
  function refresh() {
    fetch("/dashboard/overview.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          window.location.href = "/dashboard/login?next=%2Fdashboard";
          return null;
        }
        return r.ok ? r.json() : null;
      })
      .then(function (m) {
        if (!m) return;
        elements.forEach(function (el) {
          var v = m.display[el.getAttribute("data-metric")];
          if (v === undefined || el.textContent === v) return;
          el.textContent = v;
          if (el.classList.contains("value")) {
            el.classList.add("changed");
            setTimeout(function () { el.classList.remove("changed"); }, 1500);
          }
        });
      })
      .catch(function () { /* offline for a moment: the next tick tries again */ });
  }
  setInterval(refresh, PERIOD_MS);
})();
