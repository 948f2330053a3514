"""Plain result records that convert to CSV, JSON and Markdown tables (labels like "17.14")."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def head_label(layer: int, head: int) -> str:
    """The field's label of head ``head`` in layer ``layer``: "layer.head"."""
    return f"{layer}.{head}"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class Table:
    """Rows of plain values with named columns."""

    def __init__(self, rows: Iterable[dict], columns: Sequence[str] | None = None):
        self.rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
        self.columns = list(columns) if columns else (list(self.rows[0]) if self.rows else [])

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def column(self, name: str) -> list:
        return [row[name] for row in self.rows]

    def to_csv(self, path: str | Path | None = None) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        if path is not None:
            Path(path).write_text(buffer.getvalue())
        return buffer.getvalue()

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps([{c: row.get(c) for c in self.columns} for row in self.rows], indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self, digits: int = 4) -> str:
        def fmt(v):
            return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

        return markdown_table(self.columns, [[fmt(row.get(c)) for c in self.columns] for row in self.rows])

    def __repr__(self) -> str:
        return f"Table({len(self)} rows, columns={self.columns})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], escape: bool = False) -> str:
    """The project's one Markdown table writer: ``| a | b |``, ``|---|---|``, one line per row of cells (already
    formatted; ``escape``: a "|" inside a cell, as in |x|, is written \\| so that it does not end the cell)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|") if escape else str(value)

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def head_table(values: np.ndarray, name: str = "value", descending: bool = True) -> Table:
    """A [n_layers, n_heads] array as rows (label, layer, head, name), sorted by value."""
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype.kind not in "iuf":
        from refimpl.errors import InputError

        raise InputError(f"head_table needs a real [n_layers, n_heads] array, got shape {values.shape} "
                         f"dtype {values.dtype}")
    rows = [{"label": head_label(l, h), "layer": l, "head": h, name: float(values[l, h])}
            for l in range(values.shape[0]) for h in range(values.shape[1])]
    rows.sort(key=lambda r: -r[name] if descending else r[name])
    return Table(rows, ["label", "layer", "head", name])
