// The overview refreshes its figures in place (the server renders the same fragment).
"use strict";
(function () {
  const root = document.getElementById("overview");
  if (!root) return;
  const every = Number(root.dataset.refresh) || 3000;
  async function refresh() {
    try {
      const r = await fetch("/overview.part", {credentials: "same-origin"});
      if (r.ok) root.innerHTML = await r.text();
      else if (r.status === 401) location.reload();  // the login expired: show the form
    } catch (e) { /* the node is restarting: try again */ }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
