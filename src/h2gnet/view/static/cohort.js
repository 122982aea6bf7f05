// h2gnet view, cohort page: sort by a column (click or Enter on its heading), filter by text and status.
(function () {
  "use strict";
  const table = document.getElementById("cohort");
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const filter = document.getElementById("filter");
  const status = document.getElementById("status");
  const shown = document.getElementById("shown");
  const rows = Array.from(body.rows);
  let sortColumn = -1;
  let direction = 1;

  function value(row, column, type) {
    const cell = row.cells[column];
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    if (type === "number") {
      return raw === "" ? null : parseFloat(raw);
    }
    return raw.toLowerCase();
  }

  function sortBy(column) {
    const type = heads[column].dataset.type;
    if (type === "none") {
      return;
    }
    direction = sortColumn === column ? -direction : 1;
    sortColumn = column;
    const sorted = rows.slice().sort(function (a, b) {
      const x = value(a, column, type);
      const y = value(b, column, type);
      if (x === null || y === null) {  // empty cells last, whichever the direction
        return (x === null) - (y === null);
      }
      return (x < y ? -1 : x > y ? 1 : 0) * direction;
    });
    sorted.forEach(function (row) { body.appendChild(row); });
    heads.forEach(function (head, i) {
      head.setAttribute("aria-sort", i === column ? (direction > 0 ? "ascending" : "descending") : "none");
    });
  }

  function applyFilter() {
    const words = filter.value.trim().toLowerCase();
    const wanted = status.value;
    let count = 0;
    rows.forEach(function (row) {
      const keep = (!wanted || row.dataset.status === wanted) &&
        (!words || row.textContent.toLowerCase().indexOf(words) >= 0);
      row.hidden = !keep;
      count += keep ? 1 : 0;
    });
    shown.textContent = count + " of " + rows.length + " slides";
  }

  heads.forEach(function (head, i) {
    head.addEventListener("click", function () { sortBy(i); });
    head.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { sortBy(i); }
    });
  });
  filter.addEventListener("input", applyFilter);
  status.addEventListener("change", applyFilter);
  applyFilter();
})();
