// kohyawan ui: live pages. A page that names an event stream in <body data-live> is told when the files
// behind it change; it then asks htmx to refetch its [data-refresh] parts and redraws its charts.
(function () {
  "use strict";
  function refresh() {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      if (window.htmx) { window.htmx.trigger(el, "refresh"); }
    });
    if (window.kohyawanCharts) { window.kohyawanCharts.reload(); }
  }
  function connect() {
    var url = document.body.getAttribute("data-live");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("change", refresh);
  }
  document.addEventListener("DOMContentLoaded", connect);
})();
