"""Labels from a CSV file: lines of path,label[,split], with or without a header.

Paths are relative to the CSV's folder and never outside it; the delimiter (comma, semicolon,
tab) is detected; a UTF-8 byte-order mark and Windows line ends are accepted. Every row that
cannot be used is returned as a SkippedFile naming the CSV line.
"""

from __future__ import annotations

import csv
import io
import os

from tlstudio.core.data.images import _os_reason
from tlstudio.core.data.layout import SPLIT_NAMES
from tlstudio.core.data.records import DatasetError, SkippedFile

_PATH_HEADERS = {"path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img", "name", "id"}
_LABEL_HEADERS = {"label", "class", "category", "target", "labels", "class_name", "y"}


def listed_path(root: str, rel: str) -> str | None:
    """The full path of an image a label table (CSV, TSV, XLSX) lists relative to its folder
    ``root`` ("\\" separators accepted), or None when it points outside that folder: ``..``,
    absolute paths elsewhere and Windows drive letters are refused."""
    rel_os = rel.replace("\\", "/")
    if os.path.isabs(rel_os) or (len(rel_os) > 1 and rel_os[1] == ":"):
        full = os.path.normpath(rel_os)
    else:
        full = os.path.normpath(os.path.join(root, rel_os))
    root_n, full_n = os.path.normcase(os.path.normpath(root)), os.path.normcase(full)
    return full if full_n == root_n or full_n.startswith(root_n + os.sep) else None


def claim_listed(root: str, rel: str, where: str, seen: set[str], skipped: list, folder: str) -> str | None:
    """A table row's image path, once: its full path (added to ``seen``), or None with the reason
    in ``skipped`` (outside ``folder``, the table's folder, or listed on an earlier row)."""
    full = listed_path(root, rel)
    if full is None:
        skipped.append(SkippedFile(rel, f"{where}: path is outside {folder} (refused)"))
        return None
    if full in seen:
        skipped.append(SkippedFile(full, f"{where}: listed more than once"))
        return None
    seen.add(full)
    return full


def decode_csv(data: bytes) -> tuple[str, str | None]:
    """Text of a CSV file and a warning when it was not UTF-8: UTF-16 with a byte-order mark
    (Excel's "Unicode text"), UTF-8 with or without one, else Windows-1252 (older exports)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text, "is not UTF-8: it was read as Windows-1252 (check that accented names look right)"


def csv_has_label_header(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            text, _ = decode_csv(f.read(65536))
    except (OSError, UnicodeDecodeError):
        return False
    first = next(csv.reader(io.StringIO(text.split("\n", 1)[0].rstrip("\r"))), [])
    cols = {c.strip().lower() for c in first}
    return bool(cols & _PATH_HEADERS) and bool(cols & _LABEL_HEADERS)


def read_csv(csv_path: str) -> tuple[list[tuple[str, str, str | None, int]], list[SkippedFile], list[str]]:
    """Rows (absolute path, label, split or None, line no.), skipped rows, warnings."""
    root = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, "rb") as f:
            text, encoding_note = decode_csv(f.read())
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a text CSV file (UTF-8, UTF-16 or Windows-1252).") from None
    except OSError as e:
        raise DatasetError(f"{csv_path}: {_os_reason(e)}") from None
    if "\x00" in text:
        raise DatasetError(f"{csv_path}: not a text CSV file (it holds binary data).")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text, newline=""), dialect))  # quoted fields may hold line breaks
    if not rows:
        raise DatasetError(f"{csv_path} is empty: expected lines of path,label.")
    pi, li, si = 0, 1, None
    first = [c.strip().lower() for c in rows[0]]
    start = 0
    if any(c in _PATH_HEADERS for c in first) or any(c in _LABEL_HEADERS for c in first):
        start = 1
        pi = next((i for i, c in enumerate(first) if c in _PATH_HEADERS), 0)
        li = next((i for i, c in enumerate(first) if c in _LABEL_HEADERS), 1 if pi == 0 else 0)
        si = next((i for i, c in enumerate(first) if c == "split"), None)
    out: list[tuple[str, str, str | None, int]] = []
    skipped: list[SkippedFile] = []
    warns: list[str] = [f"{os.path.basename(csv_path)} {encoding_note}."] if encoding_note else []
    seen: set[str] = set()
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{os.path.basename(csv_path)} line {lineno}"
        if len(row) <= max(pi, li):
            skipped.append(SkippedFile(",".join(row), f"{where}: expected path,label"))
            continue
        rel, label = row[pi].strip(), row[li].strip()
        if not label:
            skipped.append(SkippedFile(rel, f"{where}: no label"))
            continue
        full = claim_listed(root, rel, where, seen, skipped, "the CSV's folder")
        if full is None:
            continue
        split = None
        if si is not None and si < len(row):
            split = SPLIT_NAMES.get(row[si].strip().lower())
            if row[si].strip() and split is None:
                warns.append(f"{where}: unknown split '{row[si].strip()}' (use train, val or test); split column ignored")
                si = None
        out.append((full, label, split, lineno))
    return out, skipped, warns
