"""The path a user with hub access takes, checked offline: the datasets floor, moved repository ids and the
fallback to a cache filled under an old id, disjoint train / validation / test, real COCO ids, and how many
rows a seeded stream reads. Fixtures are written here (schemas from test_hub)."""

import json
import logging
import re
import shutil
import tomllib
from pathlib import Path

import datasets
import pytest
import yaml

from lit_vlm.data import hub
from lit_vlm.errors import UserError
from test_hub import SCHEMAS, write_parquet

ROOT = Path(__file__).resolve().parents[1]

# Top-level names of datasets 4.0.0 that a loader could use, read from its installed package
# (pip install datasets==4.0.0; python -c "import datasets; print(dir(datasets))"), restricted to the API area.
DATASETS_4_0_0 = {
    "Array2D", "Array3D", "Audio", "ClassLabel", "Dataset", "DatasetDict", "DownloadConfig", "DownloadManager",
    "Features", "Image", "IterableDataset", "IterableDatasetDict", "LargeList", "List", "Sequence", "Split",
    "Translation", "Value", "Video", "concatenate_datasets", "config", "interleave_datasets", "load_dataset",
    "load_dataset_builder", "load_from_disk",
}


# --- 1. the datasets floor -----------------------------------------------------------------------------------
def test_pyproject_floor_is_the_one_the_code_declares():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"datasets>=([\d.]+)", d.replace(" ", "")).group(1) for d in deps if d.startswith("datasets"))
    assert hub._version_tuple(floor) == hub._version_tuple(hub.DATASETS_MIN) == (4, 0, 0)


def test_hub_uses_only_names_of_the_oldest_allowed_datasets():
    used = set(re.findall(r"\bdatasets\.([A-Za-z_]\w*)", (ROOT / "lit_vlm/data/hub.py").read_text()))
    used.discard("__version__")
    assert used <= set(hub.DATASETS_API), f"declare in DATASETS_API: {sorted(used - set(hub.DATASETS_API))}"
    assert set(hub.DATASETS_API) <= DATASETS_4_0_0, sorted(set(hub.DATASETS_API) - DATASETS_4_0_0)
    assert all(hasattr(datasets, n) for n in hub.DATASETS_API)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # offline_scope sets these
        assert hasattr(datasets.config, flag)


def test_an_older_datasets_is_refused_with_the_command(monkeypatch):
    import importlib

    monkeypatch.setattr(datasets, "__version__", "3.6.0")
    with pytest.raises(UserError, match=r"datasets 3.6.0 is installed.*pip install -U 'datasets>=4.0.0'"):
        importlib.reload(hub)
    monkeypatch.undo()
    importlib.reload(hub)


# --- 2. moved repositories -----------------------------------------------------------------------------------
MOVED = ("coco_caption", "coco_caption2014", "vqav2", "gqa", "ai2d", "textvqa", "docvqa")


def test_registry_uses_the_current_ids_and_keeps_the_old_ones():
    for name in MOVED:
        spec = hub.REGISTRY[name]
        assert spec.path.startswith("lmms-lab-encoder/"), spec.path
        assert spec.old_paths == ("lmms-lab/" + spec.path.split("/", 1)[1],)
    assert hub.REGISTRY["scienceqa"].old_paths == ()
    docs = (ROOT / "docs" / "hub.md").read_text()
    assert "`lmms-lab/" not in docs.replace("`lmms-lab/...`", "")  # the docs name the current ids
    for name in MOVED:
        assert f"`{hub.REGISTRY[name].path}`" in docs


def cache_under(cache_dir: Path, repo_id: str, split: str, parquet: str, config: str = "default") -> None:
    """What datasets leaves in HF_DATASETS_CACHE after loading ``repo_id`` once: its arrow files and info under
    <namespace>___<name>/<config>/<version>/<hash>/, found again offline by datasets' own cache lookup."""
    builder = datasets.load_dataset_builder("parquet", data_files={split: parquet}, cache_dir=str(cache_dir / "build"))
    builder.download_and_prepare()
    namespace, name = repo_id.split("/")
    snake = datasets.naming.camelcase_to_snakecase(name)
    target = cache_dir / f"{namespace}___{snake}" / config / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, target)
    for f in target.glob("parquet-*.arrow"):
        f.rename(f.with_name(f.name.replace("parquet-", f"{name}-", 1)))
    info = json.loads((target / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps({**info, "config_name": config, "dataset_name": name}))


@pytest.mark.parametrize("streaming", [False, True])
def test_offline_cache_under_the_old_id_still_loads(streaming, tmp_path, monkeypatch, caplog):
    rows = [{"question": "what does the sign say?", "answers": ["stop"] * 10, "image_id": "0054c91397f2fe05"},
            {"question": "what brand?", "answers": ["nokia"] * 10, "image_id": "00685bc495504d61"}]
    parquet = write_parquet(tmp_path / "textvqa.parquet", SCHEMAS["textvqa"], rows)
    cache_under(tmp_path / "hf", "lmms-lab/textvqa", "validation", parquet)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="lit_vlm.hub"):
        ds = hub.load_hub_split("textvqa", streaming=streaming, cache_dir=str(tmp_path / "hf"))
    assert ds["answer"] == ["stop", "nokia"]
    ours = [r.getMessage() for r in caplog.records if r.name == "lit_vlm.hub"]
    assert len(ours) == 1 and "lmms-lab-encoder/textvqa cannot be loaded" in ours[0]
    assert "using its former id lmms-lab/textvqa" in ours[0]


def test_offline_and_cached_under_neither_id_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"'lmms-lab-encoder/DocVQA'.*former id lmms-lab/DocVQA failed too.*offline"):
        hub.load_hub_split("docvqa", cache_dir=str(tmp_path / "empty"))


def test_online_not_found_falls_back_in_order(tmp_path, monkeypatch, caplog):
    from datasets.exceptions import DatasetNotFoundError

    parquet = write_parquet(tmp_path / "ai2d.parquet", SCHEMAS["ai2d"],
                            [{"question": "q?", "options": ["a", "b"], "answer": "1"}])
    tried, real_load = [], datasets.load_dataset

    def fake_load(path, config=None, split=None, **kw):
        tried.append(path)
        if path.startswith("lmms-lab-encoder/"):
            raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return real_load("parquet", data_files={split: parquet}, split=split, cache_dir=str(tmp_path / "c"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with caplog.at_level(logging.WARNING, logger="lit_vlm.hub"):
        ds = hub.load_hub_split("ai2d")
    assert tried == ["lmms-lab-encoder/ai2d", "lmms-lab/ai2d"] and ds["answer"] == ["B"]
    assert sum(r.name == "lit_vlm.hub" for r in caplog.records) == 1
