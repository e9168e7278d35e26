// Live pages: the server sends an event each time it records a change; the page fetches itself again
// and swaps its <main>. Without JavaScript the page still shows everything, as of its loading.
(function () {
  "use strict";
  var source = document.body.getAttribute("data-live");
  if (!source || !window.EventSource || !window.fetch) {
    return;
  }
  var busy = false;
  var again = false;
  var held = false;

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) {
          return null;
        }
        return answer.text();
      })
      .then(function (html) {
        var main = document.getElementById("live");
        var fresh = html && new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!fresh || !main) {
          return;
        }
        if (main.contains(document.activeElement)) {
          held = true; // someone is using a control in the page: swap once they leave it
        } else {
          main.innerHTML = fresh.innerHTML;
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  document.addEventListener("focusout", function (event) {
    var main = document.getElementById("live");
    if (held && main && !main.contains(event.relatedTarget)) {
      held = false;
      refresh();
    }
  });

  var events = new EventSource(source);
  var opened = false;
  events.onopen = function () {
    if (opened) {
      refresh(); // reconnected: changes may have happened while the stream was down
    }
    opened = true;
  };
  events.onmessage = refresh;
})();
