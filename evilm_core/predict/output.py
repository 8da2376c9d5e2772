"""Where predict's lines go: the `--out` JSON-lines file, which a re-run resumes, and the TSV
form of a line for stdout (docs/predict.md, "Output").

Resuming. Lines are appended in input order, each batch's lines in one write. A re-run reads
the file, keeps every complete clip (all its lines, one per item) and cuts off what a kill left
at the end: a torn last line, or the first lines of a clip whose others never came. The clips
there are skipped; the rest are computed as in the first run, so the finished file has the
lines of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from evilm_core.errors import EvilmError
from evilm_core.fs import escape_key, unescape_key

log = logging.getLogger("evilm.predict")


class ResultFile:
    """An --out file opened for appending; `done` holds the keys of the clips it already has."""

    def __init__(self, path: str | Path, expected: dict[str, int]):
        """`expected`: lines per clip key (its items), to tell a clip cut short by a kill."""
        self.path = Path(path)
        if self.path.is_dir():
            raise EvilmError(f"--out {self.path} is a directory; name a file (JSON lines)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = self._recover(expected) if self.path.exists() else set()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _recover(self, expected: dict[str, int]) -> set[str]:
        """The complete clips' keys; the file is truncated after the last one."""
        done, end = set(), 0
        key, count = None, 0  # the clip being read: its key, its lines so far
        with open(self.path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break  # torn by a kill mid-write
                try:
                    row = json.loads(raw)
                    row_key = unescape_key(row["key"])
                except (ValueError, KeyError, TypeError):
                    raise EvilmError(f"{self.path}:{n}: not a line of `evilm predict` (JSON with a 'key'); give "
                                     "--out a new file, or the file an earlier run of this command wrote") from None
                if row_key != key:
                    key, count = row_key, 0
                count += 1
                if count >= expected.get(key, count) or "error" in row:  # an unreadable clip has one line
                    done.add(key)
                    end = fh.tell()
        if end < self.path.stat().st_size:
            log.warning("%s: %d bytes after the last complete clip (an interrupted run) are cut off and computed "
                        "again", self.path, self.path.stat().st_size - end)
            os.truncate(self.path, end)
        return done

    def write(self, rows: list[dict]) -> None:
        """Append lines (one write for the whole batch)."""
        data = "".join(json_line(row) + "\n" for row in rows).encode("utf-8")
        while data:
            written = os.write(self.fd, data)
            data = data[written:]

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def json_line(row: dict) -> str:
    """A line as --json prints it and --out stores it (keys are escaped: valid UTF-8, one line)."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False)  # a NaN never passes as a result


def tsv_lines(row: dict) -> list[str]:
    """A line as TSV: `key, question, rank, answer, score` per ranked answer (the question column
    is empty where there is none); a clip that could not be answered: `key, "", error, reason, detail`."""
    key, question = row["key"], escape_key(row.get("question") or "")
    if "error" in row:
        return [f"{key}\t{question}\terror\t{row['error']}\t{escape_key(row['detail'])}"]
    if "options" in row:
        order = sorted(range(len(row["options"])), key=lambda i: -row["scores"][i])  # stable: ties in option order
        ranked = [(row["options"][i], row["scores"][i]) for i in order]
    else:
        field = next(f for f in ("answers", "labels", "texts") if f in row)
        ranked = [(entry[field[:-1]], entry.get("prob", entry.get("score"))) for entry in row[field]]
    return [f"{key}\t{question}\t{rank}\t{escape_key(answer)}\t{value:.6f}"
            for rank, (answer, value) in enumerate(ranked, 1)]
