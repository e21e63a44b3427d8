"""Reading JSONL with errors a user can act on (file, line, what the file should hold)."""

from __future__ import annotations

import json
from pathlib import Path

from smaug.errors import UserError


def read_jsonl(path: str | Path, what: str = "JSONL") -> list[dict]:
    """Rows of a JSONL file; blank lines skipped. Raises UserError naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: {what} file not found") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}); one JSON object per line") from None
    return rows
