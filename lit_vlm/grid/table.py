"""The results table: one row per cell and task family, changed only by an atomic rename under a file lock.

Cells running in parallel (``launch.launcher: local`` or ``slurm``) each write their own rows: the read,
the new file and the rename happen under ``.results.csv.lock`` (filelock), so no writer drops another's rows;
the rename keeps the table whole whatever kills a writer. The lock is the OS's (flock), freed when its holder
dies, so a kill -9 never leaves the table locked.

README documents each column; the scaling fitter reads the table directly. Columns were added after tables
were committed (``family_loss``, then the full-cost ledger): a table with an older header (``LEGACY_COLUMNS``)
still loads, and rows appended to it get the new columns (empty in the old rows).
"""

from __future__ import annotations

import csv
import errno
import os
import tempfile
from pathlib import Path

from filelock import FileLock

from lit_vlm.errors import UserError

COLUMNS = [
    "cell", "llm", "llm_params", "llm_params_with_embeddings", "visual_tokens", "text_tokens", "compressor",
    "seed", "family", "examples", "accuracy", "anls", "cer", "loss", "family_loss", "inference_flops",
    "measured_prefill_flops", "flops_ratio", "prefill_latency_ms", "train_time_s", "train_steps", "checkpoint",
]
# the full inference-cost ledger (lit_vlm.flops.measure_cost), analytic and counted per example
FULL_COST_COLUMNS = [
    "vision_flops", "measured_vision_flops", "compressor_flops", "measured_compressor_flops", "question_flops",
    "measured_question_flops", "full_inference_flops", "measured_full_flops", "full_latency_ms",
]
# added with the ledger: mean characters per OCR image (synthetic data), for characters per visual token
NEW_COLUMNS = [*FULL_COST_COLUMNS, "ocr_chars"]
_BEFORE_FULL_COST = list(COLUMNS)
COLUMNS = _BEFORE_FULL_COST + NEW_COLUMNS
# older headers that still load (newest first): before the ledger; before family_loss too
LEGACY_COLUMNS = [_BEFORE_FULL_COST, [c for c in _BEFORE_FULL_COST if c != "family_loss"]]


class ResultsTable:
    """A CSV that only ever changes by an atomic rename, so it is valid whatever kills the process."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if header != COLUMNS and header not in LEGACY_COLUMNS:
                raise UserError(
                    f"{path} has columns {header} but the grid writes {COLUMNS}; refusing to overwrite it: "
                    "move it away or choose another out_dir"
                )

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def done(self) -> set[str]:
        return {row["cell"] for row in self.rows()}

    def replace_cell(self, cell_id: str, new_rows: list[dict]) -> None:
        """Drop any rows of ``cell_id`` (a --force re-run) and append ``new_rows``, atomically, under the lock."""
        with FileLock(self.path.parent / f".{self.path.name}.lock"):
            self._replace_cell(cell_id, new_rows)

    def _replace_cell(self, cell_id: str, new_rows: list[dict]) -> None:
        rows = [r for r in self.rows() if r["cell"] != cell_id] + new_rows
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".results-", suffix=".csv")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")  # legacy rows: new columns empty
                writer.writeheader()
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            if err.errno == errno.ENOSPC:
                raise UserError(
                    f"disk full while writing {self.path}; the table is unchanged ({len(rows) - len(new_rows)} rows). "
                    "Free some space and re-run the same command to resume"
                ) from None
            raise
