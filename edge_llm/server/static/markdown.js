"use strict";
// A small Markdown renderer for model output. Everything is HTML-escaped first, so model
// output can never inject markup; links are shown as text (nothing leaves the device).
const Markdown = (() => {
  const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  const inline = (s) => s
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>");
  function render(src) {
    const out = [];
    const parts = esc(src).split(/```/);
    parts.forEach((part, i) => {
      if (i % 2 === 1) {  // fenced code: drop the language tag line
        out.push(`<pre><code>${part.replace(/^[^\n]*\n/, "")}</code></pre>`);
        return;
      }
      let list = null;
      const close = () => { if (list) { out.push(`</${list}>`); list = null; } };
      for (const line of part.split("\n")) {
        let m;
        if ((m = line.match(/^\s*[-*] (.*)/))) {
          if (list !== "ul") { close(); out.push("<ul>"); list = "ul"; }
          out.push(`<li>${inline(m[1])}</li>`);
        } else if ((m = line.match(/^\s*\d+[.)] (.*)/))) {
          if (list !== "ol") { close(); out.push("<ol>"); list = "ol"; }
          out.push(`<li>${inline(m[1])}</li>`);
        } else if ((m = line.match(/^(#{1,4}) (.*)/))) {
          close();
          out.push(`<h${m[1].length + 2}>${inline(m[2])}</h${m[1].length + 2}>`);
        } else if (line.trim() === "") {
          close();
        } else {
          close();
          out.push(`<p>${inline(line)}</p>`);
        }
      }
      close();
    });
    return out.join("");
  }
  return { render, esc };
})();
