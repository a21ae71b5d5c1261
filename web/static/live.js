// live.js keeps a page current: the element marked data-live="URL" (the
// page's content, rendered alone at URL) is fetched every data-every
// milliseconds and, when it changed, merged into the page in place:
// elements that are still there are kept and only their text and
// attributes change, new ones are added and gone ones removed. So what
// the person is doing survives: text typed into a form, the focus and
// the cursor, an open <details>. The pages work without it; it only
// saves reloads, and it is the one mechanism every page uses.
(function () {
  "use strict";

  // keyOf names an element across two renderings, where order alone
  // would not: an approval card, a form by its action, an element by id.
  function keyOf(el) {
    if (el.nodeType !== 1) { return ""; }
    return el.id || el.getAttribute("data-approval") || el.getAttribute("data-key") ||
      (el.tagName === "FORM" ? el.getAttribute("action") || "" : "");
  }

  function same(a, b) {
    if (a.nodeType !== b.nodeType) { return false; }
    if (a.nodeType !== 1) { return true; }
    return a.tagName === b.tagName && keyOf(a) === keyOf(b);
  }

  // laterHas reports whether a node from start on matches a.
  function laterHas(start, a) {
    for (var n = start; n; n = n.nextSibling) {
      if (same(a, n)) { return true; }
    }
    return false;
  }

  function syncAttributes(from, to) {
    Array.prototype.slice.call(from.attributes).forEach(function (at) {
      if (!to.hasAttribute(at.name) && !(from.tagName === "DETAILS" && at.name === "open")) {
        from.removeAttribute(at.name);
      }
    });
    Array.prototype.slice.call(to.attributes).forEach(function (at) {
      if (from.getAttribute(at.name) !== at.value && !(from.tagName === "DETAILS" && at.name === "open")) {
        from.setAttribute(at.name, at.value);
      }
    });
  }

  // morph makes from's children those of to, keeping the nodes that
  // match. Form controls keep what was typed into them: a changed value
  // attribute moves their default only.
  function morph(from, to) {
    var a = from.firstChild, b = to.firstChild;
    while (b) {
      var nextB = b.nextSibling;
      if (a && !same(a, b) && !laterHas(nextB, a)) {
        var gone = a;
        a = a.nextSibling;
        from.removeChild(gone);
        continue;
      }
      if (a && same(a, b)) {
        if (a.nodeType === 1) {
          syncAttributes(a, b);
          if (a.tagName !== "TEXTAREA") { morph(a, b); }
        } else if (a.nodeValue !== b.nodeValue) {
          a.nodeValue = b.nodeValue;
        }
        a = a.nextSibling;
      } else {
        from.insertBefore(b, a);
      }
      b = nextB;
    }
    while (a) {
      var rest = a.nextSibling;
      from.removeChild(a);
      a = rest;
    }
  }

  function refresh(el, last) {
    return fetch(el.getAttribute("data-live"), {credentials: "same-origin", redirect: "manual", headers: {"Accept": "text/html"}})
      .then(function (res) {
        if (res.type === "opaqueredirect" || res.status === 401 || res.status === 403) {
          // The session ended: reload, which shows the login page.
          window.location.reload();
          return null;
        }
        return res.ok ? res.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined || html === last.html) { return; }
        last.html = html;
        var doc = new DOMParser().parseFromString("<body>" + html + "</body>", "text/html");
        morph(el, doc.body);
        el.dispatchEvent(new CustomEvent("live:updated", {bubbles: true}));
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }

  function start() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var every = parseInt(el.getAttribute("data-every"), 10) || 5000;
      var last = {html: null}, busy = false;
      window.setInterval(function () {
        if (busy || document.visibilityState !== "visible") { return; }
        busy = true;
        refresh(el, last).finally(function () { busy = false; });
      }, every);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
