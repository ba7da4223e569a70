"""Load prompt datasets from jsonl / json / parquet files or a saved Hugging Face dataset dir.

Every row is checked before training starts; a bad row is an error that names the file and the
line (1-based for jsonl, row index otherwise) and what is wrong with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file and the line."""


def _check_row(row: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field in required:
        if field not in row:
            raise DataError(f"{where}: missing field {field!r} (has: {', '.join(map(str, row)) or 'none'})")
        value = row[field]
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{where}: field {field!r} is {value}, not a usable value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row = {**row, field: str(value)}
        elif not isinstance(value, str):
            raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
        elif not value.strip():
            raise DataError(f"{where}: field {field!r} is empty")
    return row


def read_rows(path: str | Path) -> list[tuple[str, Any]]:
    """(where, row) of every row of a dataset file: `where` is `file:line` for jsonl, `file row i`
    otherwise. A saved `datasets` directory reads its `train` split (else its first), or the
    split named after `@`: `data/gsm8k@test`."""
    path, split = _split_of(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    rows: list[tuple[str, Any]] = []
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is not None and split not in ds:
                raise DataError(f"{path}: no split {split!r} (has: {', '.join(ds)})")
            ds = ds[split] if split else ds["train"] if "train" in ds else next(iter(ds.values()))
        rows = [(f"{path} row {i}", dict(r)) for i, r in enumerate(ds)]
    elif split is not None:
        raise DataError(f"{path}@{split}: only a saved datasets directory has splits")
    elif path.suffix == ".jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
                rows.append((f"{path}:{lineno}", row))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 at byte {exc.start} ({exc.reason})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        rows = [(f"{path} row {i}", r) for i, r in enumerate(data)]
    elif path.suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path))
        rows = [(f"{path} row {i}", dict(r)) for i, r in enumerate(ds)]
    else:
        raise DataError(f"{path}: unsupported dataset format (use .jsonl, .json, .parquet or a dataset dir)")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _split_of(path: str | Path) -> tuple[Path, str | None]:
    text = str(path)
    if "@" in text and not Path(text).exists():
        base, split = text.rsplit("@", 1)
        return Path(base), split
    return Path(text), None


def load_rows(path: str | Path, required: tuple[str, ...] = ("question", "answer")) -> list[dict[str, Any]]:
    """Rows of a dataset file as they are, each validated to carry non-empty `required` string
    fields (SFT data); prompt datasets go through `load_dataset` instead."""
    return [_check_row(row, where, required) for where, row in read_rows(path)]


@dataclass
class Dataset:
    """Canonical rows of one file, the format they were read as, and where each row came from."""

    source: str
    format: str
    rows: list[dict[str, Any]]
    wheres: list[str]  # `file:line` (jsonl) or `file row i`, one per row


def load_dataset(source: str | Path, fmt: str = "auto", prompt_field: str | None = None,
                 answer_field: str | None = None, seed: int = 0) -> Dataset:
    """Canonical rows of a prompt dataset file (`r1lab.data.formats`) read as `fmt`, or as the
    format the first row's columns say (`auto`). A row that does not fit is a DataError naming
    the file and line."""
    from r1lab.data.formats import FORMAT_NAMES, FormatError, detect, to_canonical

    if fmt not in FORMAT_NAMES:
        raise DataError(f"data.format: unknown format {fmt!r}; valid: {', '.join(FORMAT_NAMES)}")
    raw = read_rows(source)
    if fmt == "auto":
        first = raw[0][1]
        if not isinstance(first, dict):
            raise DataError(f"{raw[0][0]}: expected a JSON object, got {type(first).__name__}")
        fmt = detect(first)
    rows, wheres = [], []
    for i, (where, row) in enumerate(raw):
        try:
            canonical = to_canonical(row, fmt, prompt_field, answer_field, seed, i)
        except FormatError as exc:
            what = "" if fmt == "fields" else f"{fmt} row: "
            raise DataError(f"{where}: {what}{exc}") from None
        if isinstance(canonical["answer"], float) and not math.isfinite(canonical["answer"]):
            raise DataError(f"{where}: the answer is {canonical['answer']}, not a usable value")
        rows.append(canonical)
        wheres.append(where)
    return Dataset(str(source), fmt, rows, wheres)
