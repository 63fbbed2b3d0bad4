// Click a table heading to sort by that column (again to reverse); "1.2 ms", "45 MB", "0.93×" sort as numbers.
"use strict";
(function () {
  const SCALES = { ns: 1e-9, "µs": 1e-6, ms: 1e-3, s: 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9 };
  function key(text) {
    const match = text.trim().replace(/,/g, "").match(/^(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*(ns|µs|ms|s|B|KB|MB|GB)?/i);
    return match ? parseFloat(match[1]) * (SCALES[match[2]] || 1) : null;
  }
  for (const table of document.querySelectorAll("table")) {
    table.classList.add("sortable");
    const headings = [...table.querySelectorAll("thead th")];
    headings.forEach((th, column) => th.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headings.forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const rows = [...body.rows].map((row, index) => ({ row, index, text: row.cells[column] ? row.cells[column].textContent : "" }));
      rows.sort((a, b) => {
        const [ka, kb] = [key(a.text), key(b.text)];
        const order = ka !== null && kb !== null ? ka - kb : a.text.localeCompare(b.text, undefined, { numeric: true });
        return (ascending ? order : -order) || a.index - b.index;
      });
      for (const { row } of rows) body.appendChild(row);
    }));
  }
})();
