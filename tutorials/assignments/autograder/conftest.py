"""Which implementation the autograder grades: the folder in LIT_VLM_SUBMISSION (default: the solutions, or in
the student release, which has none, the stubs).

    LIT_VLM_SUBMISSION=/path/to/student_copy python -m pytest tutorials/assignments/autograder -q

The folder holds the four assignment files (a1_compressor.py, a2_flops.py, a3_scaling_law.py,
a4_ocr_compressor.py); each is imported from its path, so the folder needs no __init__.py and may live anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SOLUTIONS = HERE.parent / "solutions"
DEFAULT = SOLUTIONS if SOLUTIONS.is_dir() else HERE.parent / "student"
sys.path.insert(0, str(HERE))  # the graders import ocr_probe from here


def submission_dir() -> Path:
    return Path(os.environ.get("LIT_VLM_SUBMISSION") or DEFAULT).resolve()


def load_submission(name: str):
    """Import `name`.py from the submission folder (a fresh module object per call site)."""
    path = submission_dir() / f"{name}.py"
    if not path.is_file():
        pytest.fail(f"the submission has no {path.name} (looked in {path.parent})")
    spec = importlib.util.spec_from_file_location(f"submission_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_report_header(config):
    return f"grading: {submission_dir()}"


def pytest_configure(config):
    # Everything graded here is tiny: one CPU thread is as fast, and far faster on a busy machine
    # (thread contention made a 2-thread run ~100x slower in the OCR probe).
    import torch

    torch.set_num_threads(1)
