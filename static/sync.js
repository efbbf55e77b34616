// Live sync progress on the dashboard. The page works without it; this only saves reloads.
(function () {
  "use strict";
  var panel = document.getElementById("sync-panel");
  if (!panel) return;
  var box = document.getElementById("sync-progress");
  var bar = document.getElementById("sync-bar");
  var text = document.getElementById("sync-text");
  var wasActive = panel.hasAttribute("data-active");

  function poll() {
    fetch(panel.getAttribute("data-status-url"), { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (run) {
        if (run.active) {
          wasActive = true;
          box.hidden = false;
          if (run.percent !== null) { bar.value = run.percent; bar.textContent = run.percent + "%"; }
          else { bar.removeAttribute("value"); }
          text.textContent = run.records + " records so far" + (run.total ? " of " + run.total : "");
          setTimeout(poll, 1000);
        } else if (wasActive) {
          window.location.reload();  // show the finished run, its counts and the buttons
        }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  if (wasActive) poll();
})();
