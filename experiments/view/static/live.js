// `rlm-rig view --serve`: reload the page when the server rebuilt the site (new rows in a running run).
// Served pages only: a site opened from disk (file://) has no server to ask, and this script then does nothing.
(function () {
  "use strict";
  if (!/^https?:$/.test(location.protocol) || !document.currentScript) return;
  var url = document.currentScript.src.replace(/static\/live\.js.*$/, "live.json");
  var seen = null;
  function poll() {
    fetch(url, { cache: "no-store" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (j) {
      if (!j) return;
      if (seen !== null && j.version !== seen) { location.reload(); return; }
      seen = j.version;
      if (j.running) setTimeout(poll, 2000);
    }).catch(function () { setTimeout(poll, 5000); });
  }
  poll();
})();
