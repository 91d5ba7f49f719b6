"""A small results table that prints as text and renders as HTML in notebooks."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stats import Summary

__all__ = ["Table"]


@dataclass(repr=False)
class Table:
    """A small results table that prints as text and renders as HTML in notebooks.

    Args:
        rows: One mapping per row; the keys of the first row are the columns.
        formats: Optional ``{column: format spec}``, e.g. ``{"accuracy": ".2%"}``; a
            :class:`companion.stats.Summary` cell prints as ``97.71 ± 0.06% (n=5)``.

    Example:
        >>> print(Table([{"model": "a", "params": 10}, {"model": "bb", "params": 2}]))
        model  params
        a          10
        bb          2
    """

    rows: list[dict[str, object]]
    formats: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def _cell(self, column: str, value: object) -> str:
        if value is None:
            return "n/a"
        spec = self.formats.get(column)
        if spec is not None and isinstance(value, (int, float, Summary)):
            return format(value, spec)  # a Summary prints "mean ± half-width (n=...)"
        if isinstance(value, Summary):
            return str(value)
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    def _grid(self) -> list[list[str]]:
        return [[self._cell(c, row.get(c, "")) for c in self.columns] for row in self.rows]

    def __str__(self) -> str:
        grid = [self.columns, *self._grid()]
        widths = [max(len(r[i]) for r in grid) for i in range(len(self.columns))]
        numeric = [
            all(isinstance(row.get(c), (int, float, Summary)) for row in self.rows)
            for c in self.columns
        ]
        lines = []
        for r in grid:
            cells = [
                cell.rjust(w) if is_num else cell.ljust(w)
                for cell, w, is_num in zip(r, widths, numeric, strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>" for r in self._grid())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def column(self, name: str) -> list[object]:
        """All values of one column, in row order."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns are {self.columns}")
        return [row[name] for row in self.rows]

    def row(self, key: object, column: str | None = None) -> dict[str, object]:
        """The first row whose first (or given) column equals ``key``."""
        column = column or self.columns[0]
        for r in self.rows:
            if r.get(column) == key:
                return r
        raise KeyError(f"no row with {column}={key!r}")
