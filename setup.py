"""Packaging beyond pyproject.toml: a built wheel carries the committed grid results, so that a kit installed
with pip (Colab) shows the same grid as a clone. results/<grid>/results.csv and grid.log, and the grid's config
configs/grid/<grid>.yaml (as config.yaml), become package data under lit_vlm/_committed/<grid>/
(lit_vlm.tutorial.committed_file finds them); so do analyses a notebook reads, results/<grid>/regime/*.json."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithResults(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads results/ from the clone itself
        for table in sorted(ROOT.glob("results/*/results.csv")):
            grid = table.parent.name
            out = Path(self.build_lib) / "lit_vlm" / "_committed" / grid
            out.mkdir(parents=True, exist_ok=True)
            sources = {"results.csv": table, "grid.log": table.parent / "grid.log",
                       "config.yaml": ROOT / "configs" / "grid" / f"{grid}.yaml"}
            for name, src in sources.items():
                if src.is_file():
                    shutil.copyfile(src, out / name)
        for report in sorted(ROOT.glob("results/*/regime/*.json")):  # e.g. the OCR sweep's regime (notebook 05)
            out = Path(self.build_lib) / "lit_vlm" / "_committed" / report.parent.parent.name / "regime"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report, out / report.name)


setup(cmdclass={"build_py": BuildPyWithResults})
