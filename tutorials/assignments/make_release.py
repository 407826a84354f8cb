"""Build the student release of the assignments: the stubs, the public checks, no solutions, no hidden tests.

    python tutorials/assignments/make_release.py OUT_DIR

OUT_DIR (must not exist yet) gets README.md, student/ (the four stubs) and autograder/ (conftest.py,
ocr_probe.py and the public test_a*.py files; autograder/hidden/ stays with the instructor). In the release the
autograder grades student/ by default; students run `python -m pytest autograder -q` in OUT_DIR.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PUBLIC = ["conftest.py", "ocr_probe.py", "test_a1_compressor.py", "test_a2_flops.py", "test_a3_scaling_law.py",
          "test_a4_ocr_compressor.py"]


def build_release(out: Path) -> Path:
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder for the release")
    (out / "autograder").mkdir(parents=True)
    shutil.copytree(HERE / "student", out / "student", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PUBLIC:
        shutil.copyfile(HERE / "autograder" / name, out / "autograder" / name)
    shutil.copyfile(HERE / "README.md", out / "README.md")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tutorials/assignments/make_release.py OUT_DIR", file=sys.stderr)
        return 2
    try:
        out = build_release(Path(argv[0]))
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"student release in {out}: student/ (stubs), autograder/ (public checks); no solutions, no hidden tests")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
