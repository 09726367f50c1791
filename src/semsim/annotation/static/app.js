// Keyboard shortcuts for the annotation pages (no external code). Each choice button carries data-key;
// Backspace undoes the last answer; with many classes a filter box narrows the buttons and Enter picks the
// first one still shown. A page submits at most once, so a key held down cannot send two answers.
(function () {
  "use strict";
  var sent = false;
  function submitOnce(button) {
    if (sent || !button || button.disabled) { return; }
    sent = true;
    button.click();
  }
  function visibleChoices() {
    return Array.prototype.filter.call(document.querySelectorAll("button.choice"), function (b) { return !b.hidden; });
  }
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase();
      document.querySelectorAll("button.choice").forEach(function (b) {
        b.hidden = q !== "" && b.getAttribute("data-text").indexOf(q) === -1 && !b.classList.contains("cant");
      });
    });
  }
  document.querySelectorAll("form").forEach(function (f) {
    f.addEventListener("submit", function (e) { if (f.dataset.sent) { e.preventDefault(); } f.dataset.sent = "1"; });
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var inFilter = filter && document.activeElement === filter;
    if (e.key === "Backspace" && (!inFilter || filter.value === "")) {
      e.preventDefault();
      submitOnce(document.getElementById("undo"));
      return;
    }
    if (inFilter && e.key === "Enter") {
      e.preventDefault();
      var shown = visibleChoices().filter(function (b) { return !b.classList.contains("cant"); });
      submitOnce(shown[0]);
      return;
    }
    var key = e.key.toLowerCase();
    if (key === "-" || !inFilter) {
      var match = visibleChoices().filter(function (b) { return b.getAttribute("data-key") === key; })[0];
      if (match && key !== "") {
        e.preventDefault();
        submitOnce(match);
      }
    }
  });
}());
