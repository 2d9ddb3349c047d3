"""The one error type users see: a problem they can fix, printed as one message, exit code 2."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2
RECORD_NUMBERED = (".json", ".parquet")  # inputs (and save_to_disk folders) whose errors count records, not lines


def _numbers_records(path: Path) -> bool:
    """Whether errors in this input count records rather than lines: .json and .parquet (also compressed), a
    save_to_disk folder, and a dataset named by its hub id (no such local path, OWNER/NAME[:SPLIT])."""
    suffix = path.with_suffix("").suffix if path.suffix in (".gz", ".zst") else path.suffix
    hub_id = not path.exists() and len(path.parts) == 2 and not path.suffix
    return suffix in RECORD_NUMBERED or path.is_dir() or hub_id


class GradsError(Exception):
    """A user-fixable problem: names the file, the line (or record) and what to do."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 hint: str | None = None, where: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint
        self.where = where  # the place in words, when it is not a file (the Python API's `records[3]`)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where is not None else ""
        if self.where is None and self.path is not None:
            where = f"{self.path}: "
            if self.line is not None:
                by_record = _numbers_records(Path(self.path))
                where = f"{self.path}: record {self.line}: " if by_record else f"{self.path}:{self.line}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
