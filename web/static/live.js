// live.js keeps a page current: the element marked data-live="URL" (the
// page's content, rendered alone at URL) is fetched every data-every
// milliseconds and swapped in when it changed. What the person is doing
// survives the swap: text typed into a form, which field has the focus
// and where its cursor is, and open <details>. The pages work without
// it; it only saves reloads, and it is the one mechanism every page uses.
(function () {
  "use strict";

  // key names a form control across two renderings of the page: its
  // form's action and its name (or id).
  function key(el) {
    var form = el.form ? el.form.getAttribute("action") || "" : "";
    return form + "|" + (el.name || el.id || "");
  }

  function controls(root) {
    return Array.prototype.slice.call(root.querySelectorAll("input, textarea, select"));
  }

  // typed records what the person changed: values that differ from the
  // page's own, and checkboxes they flipped.
  function typed(root) {
    var kept = {};
    controls(root).forEach(function (el) {
      if (el.type === "hidden" || el.type === "submit") { return; }
      if (el.type === "checkbox" || el.type === "radio") {
        if (el.checked !== el.defaultChecked) { kept[key(el) + "|" + el.value] = el.checked; }
      } else if (el.tagName === "SELECT") {
        var changed = Array.prototype.some.call(el.options, function (o) { return o.selected !== o.defaultSelected; });
        if (changed) { kept[key(el)] = el.value; }
      } else if (el.value !== el.defaultValue) {
        kept[key(el)] = el.value;
      }
    });
    return kept;
  }

  function restore(root, kept, focus) {
    controls(root).forEach(function (el) {
      if (el.type === "checkbox" || el.type === "radio") {
        var k = key(el) + "|" + el.value;
        if (k in kept) { el.checked = kept[k]; }
      } else if (key(el) in kept) {
        el.value = kept[key(el)];
      }
      if (focus && key(el) === focus.key) {
        el.focus();
        try { el.setSelectionRange(focus.start, focus.end); } catch (e) { /* not a text field */ }
      }
    });
  }

  function openDetails(root) {
    var open = {};
    root.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    return open;
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
        var kept = typed(el), details = openDetails(el), focus = null;
        var active = document.activeElement;
        if (active && el.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
          focus = {key: key(active), start: active.selectionStart, end: active.selectionEnd};
        }
        var doc = new DOMParser().parseFromString(html, "text/html");
        el.replaceChildren.apply(el, Array.prototype.slice.call(doc.body.childNodes));
        restore(el, kept, focus);
        el.querySelectorAll("details[id]").forEach(function (d) {
          if (d.id in details) { d.open = details[d.id]; }
        });
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
