"""Label tables (CSV/TSV/XLSX with a header row): an image path column, several label columns
and an optional ``split`` column; an EMPTY cell means "no label for this task"."""

from __future__ import annotations

import csv
import os

from tlstudio.core.data.csv_labels import claim_listed
from tlstudio.core.data.dataset import SPLIT_NAMES, DatasetError, SkippedFile, _PATH_HEADERS
from tlstudio.core.data.images import _os_reason
from tlstudio.core.data.multitask_report import MultiTaskReport, build_report


def read_table(path: str) -> tuple[list[str], list[list[str]]]:
    if path.lower().endswith(".xlsx"):
        try:
            import openpyxl  # optional: only when installed
        except ImportError:
            raise DatasetError(f"{path}: reading .xlsx needs openpyxl; save the sheet as CSV instead.") from None
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = [["" if c is None else str(c) for c in r] for r in wb.active.iter_rows(values_only=True)]
    else:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not a UTF-8 text file.") from None
        except OSError as e:
            raise DatasetError(f"{path}: {_os_reason(e)}") from None
        try:
            dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel_tab if path.lower().endswith(".tsv") else csv.excel
        rows = list(csv.reader(text.splitlines(), dialect))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DatasetError(f"{path}: expected a header row (path and label column names) and at least one image row.")
    return [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]


def table_columns(path: str | os.PathLike) -> tuple[str, str | None, list[str]]:
    """(path column, split column or None, label columns) from the header row."""
    header, _ = read_table(str(path))
    low = [h.lower() for h in header]
    pi = next((i for i, h in enumerate(low) if h in _PATH_HEADERS), 0)
    si = next((i for i, h in enumerate(low) if h == "split"), None)
    labels = [h for i, h in enumerate(header) if i not in (pi, si) and h]
    return header[pi], (header[si] if si is not None else None), labels


def scan_table(path: str, tasks, types, **kw) -> MultiTaskReport:
    header, body = read_table(path)
    pcol, scol, labels = table_columns(path)
    names = list(tasks) if tasks else labels
    unknown = [t for t in names if t not in header]
    if unknown:
        raise DatasetError(f"{path}: no column {', '.join(repr(u) for u in unknown)}; label columns: {', '.join(labels)}")
    if not names:
        raise DatasetError(f"{path}: no label columns next to '{pcol}'.")
    root = os.path.dirname(os.path.abspath(path))
    pi, si = header.index(pcol), header.index(scol) if scol else None
    cols = [header.index(n) for n in names]
    rows, skipped, warns, seen = [], [], [], set()
    for lineno, r in enumerate(body, start=2):
        where = f"{os.path.basename(path)} line {lineno}"
        rel = r[pi] if pi < len(r) else ""
        if not rel:
            skipped.append(SkippedFile(",".join(r), f"{where}: no image path"))
            continue
        rel = rel.replace("\\", "/")
        full = claim_listed(root, rel, where, seen, skipped, "the table's folder")
        if full is None:
            continue
        split = None
        if si is not None and si < len(r) and r[si]:
            split = SPLIT_NAMES.get(r[si].lower())
            if split is None:
                warns.append(f"{where}: unknown split '{r[si]}' (use train, val or test): row put in train")
                split = "train"
        rows.append((full, split, [r[c] if c < len(r) else "" for c in cols], where))
    return build_report(root, "table", path, names, types, rows, skipped, warns, labels, **kw)

