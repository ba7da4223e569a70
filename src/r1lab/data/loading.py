"""Load prompt datasets from jsonl / json / parquet files or a saved Hugging Face dataset dir.

Every row is checked before training starts; a bad row is an error that names the file and the
line (1-based for jsonl, row index otherwise) and what is wrong with it.
"""

from __future__ import annotations

import json
import math
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


def load_rows(path: str | Path, required: tuple[str, ...] = ("question", "answer")) -> list[dict[str, Any]]:
    """Rows of a dataset file, each validated to carry non-empty `required` string fields."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    rows: list[dict[str, Any]] = []
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        rows = [_check_row(dict(r), f"{path} row {i}", required) for i, r in enumerate(ds)]
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
                rows.append(_check_row(row, f"{path}:{lineno}", required))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 at byte {exc.start} ({exc.reason})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        rows = [_check_row(r, f"{path} row {i}", required) for i, r in enumerate(data)]
    elif path.suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path))
        rows = [_check_row(dict(r), f"{path} row {i}", required) for i, r in enumerate(ds)]
    else:
        raise DataError(f"{path}: unsupported dataset format (use .jsonl, .json, .parquet or a dataset dir)")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
