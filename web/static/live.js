// live.js refreshes the parts of a page marked data-live="URL": every few
// seconds it fetches URL (the page's own fragment) and swaps it in. The
// pages work without it; it only saves a reload.
(function () {
  "use strict";
  var every = 5000;
  function refresh(el) {
    fetch(el.getAttribute("data-live"), {credentials: "same-origin", redirect: "manual", headers: {"Accept": "text/html"}})
      .then(function (res) {
        if (res.type === "opaqueredirect" || res.status === 401 || res.status === 403) {
          // The session ended: reload, which shows the login page.
          window.location.reload();
          return null;
        }
        return res.ok ? res.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          el.replaceChildren.apply(el, Array.prototype.slice.call(doc.body.childNodes));
        }
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }
  function start() {
    var parts = document.querySelectorAll("[data-live]");
    if (parts.length === 0) { return; }
    window.setInterval(function () {
      if (document.visibilityState === "visible") {
        parts.forEach(refresh);
      }
    }, every);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
