// Keyboard shortcuts for the annotation pages (no external code). Each choice button carries data-key (shown on
// the button). Outside text boxes a key gives its answer and Backspace undoes the last one. Inside the filter
// box (studies with many classes) keys only type: Enter picks the first class still shown and Escape leaves
// the box; nothing destructive happens there. A page submits at most once, so a key held down cannot send two
// answers.
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
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.isContentEditable);
  }
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase();
      document.querySelectorAll("button.choice").forEach(function (b) {
        var fixed = b.classList.contains("cant") || b.classList.contains("action");
        b.hidden = q !== "" && b.getAttribute("data-text").indexOf(q) === -1 && !fixed;
      });
    });
  }
  document.querySelectorAll("form").forEach(function (f) {
    f.addEventListener("submit", function (e) { if (f.dataset.sent) { e.preventDefault(); } f.dataset.sent = "1"; });
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (typing(document.activeElement)) {
      if (document.activeElement === filter && e.key === "Enter") {
        e.preventDefault();
        var shown = visibleChoices().filter(function (b) { return b.classList.length === 1; });
        submitOnce(shown[0]);
      } else if (e.key === "Escape") {
        document.activeElement.blur();
      }
      return;
    }
    if (e.key === "Backspace") {
      var undo = document.getElementById("undo");
      if (undo) { e.preventDefault(); submitOnce(undo); }
      return;
    }
    var key = e.key.toLowerCase();
    var match = visibleChoices().filter(function (b) { return b.getAttribute("data-key") === key; })[0];
    if (match && key !== "") {
      e.preventDefault();
      submitOnce(match);
    }
  });
}());
