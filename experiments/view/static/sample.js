// Sample page: a click on a document-map span (or any #sc-… link) opens that sub_call and its parents.
(function () {
  "use strict";
  function reveal() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    var el = document.getElementById(id);
    if (!el) return;
    for (var p = el; p; p = p.parentElement) { if (p.tagName === "DETAILS") p.open = true; }
    document.querySelectorAll(".subcall.focus").forEach(function (x) { x.classList.remove("focus"); });
    el.classList.add("focus");
    el.scrollIntoView({ block: "start" });
  }
  window.addEventListener("hashchange", reveal);
  reveal();
})();
