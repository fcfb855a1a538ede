// The samples table: sort, filter and page over the rows embedded in #samples-data.
// Every value is written with textContent, never innerHTML: model-written text stays text.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("samples-data").textContent);
  var cols = data.columns, rows = data.rows, C = {};
  cols.forEach(function (c, i) { C[c] = i; });
  var PAGE = 100, page = 0, sortCol = null, sortDir = 1, view = rows.slice();
  var tbody = document.querySelector("#samples tbody");
  var shown = ["id", "question_type", "length", "gold", "answer", "score", "stop_reason", "failure", "n_sub_calls", "wall_s", "question"];
  if (data.has_replica) shown.splice(shown.length - 1, 0, "replica");
  var lower = rows.map(function (r) { return ((r[C.question] || "") + " " + r[C.id]).toLowerCase(); });
  var index = rows.map(function (_r, i) { return i; });

  function num(el) { var v = el.value.trim(); return v === "" ? null : parseFloat(v); }
  function fmt(c, v) {
    if (v === null || v === undefined) return "–";
    if (c === "score" && typeof v === "number") return v.toFixed(3);
    return String(v);
  }
  function apply() {
    var fail = document.getElementById("f-failures").checked;
    var cls = document.getElementById("f-class").value;
    var lo = num(document.getElementById("f-min")), hi = num(document.getElementById("f-max"));
    var text = document.getElementById("f-text").value.trim().toLowerCase();
    var out = [];
    for (var k = 0; k < index.length; k++) {
      var i = index[k], r = rows[i], s = r[C.score];
      if (fail && !(s < 1)) continue;
      if (cls && r[C.failure] !== cls) continue;
      if (lo !== null && !(s >= lo)) continue;
      if (hi !== null && !(s <= hi)) continue;
      if (text && lower[i].indexOf(text) < 0) continue;
      out.push(r);
    }
    view = out;
    page = 0;
    render();
  }
  function sortBy(col) {
    sortDir = sortCol === col ? -sortDir : 1;
    sortCol = col;
    var j = C[col];
    index.sort(function (a, b) {
      var x = rows[a][j], y = rows[b][j];
      if (x === y) return a - b;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    document.querySelectorAll("#samples th").forEach(function (th) {
      th.classList.toggle("sorted-asc", th.dataset.col === col && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.col === col && sortDir === -1);
    });
    apply();
  }
  function render() {
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    if (page >= pages) page = pages - 1;
    var frag = document.createDocumentFragment();
    view.slice(page * PAGE, (page + 1) * PAGE).forEach(function (r) {
      var tr = document.createElement("tr");
      if (r[C.score] < 1) tr.className = "failed";
      shown.forEach(function (c) {
        var td = document.createElement("td");
        td.className = "c-" + c;
        if (c === "id") {
          var a = document.createElement("a");
          a.href = r[C.href];
          a.textContent = r[C.id];
          td.appendChild(a);
        } else {
          td.textContent = fmt(c, r[C[c]]);
        }
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    tbody.replaceChildren(frag);
    document.getElementById("count").textContent = view.length + " of " + rows.length + " samples";
    document.getElementById("page").textContent = "page " + (page + 1) + " / " + pages;
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
    window.__samplesRendered = (window.__samplesRendered || 0) + 1;
  }
  ["f-failures", "f-class", "f-min", "f-max"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", apply);
  });
  document.getElementById("f-text").addEventListener("input", apply);
  document.getElementById("prev").addEventListener("click", function () { page--; render(); });
  document.getElementById("next").addEventListener("click", function () { page++; render(); });
  document.querySelectorAll("#samples th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.dataset.col); });
  });
  apply();
  window.__samplesReady = performance.now();
})();
