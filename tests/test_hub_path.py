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


@pytest.fixture(autouse=True)
def no_stream_shutdown_sleep(monkeypatch):
    """datasets 5 sleeps 5 s after a parquet stream stops early (an arrow thread-shutdown workaround): per load,
    harmless on real data, but it would make these fixture loads minutes long."""
    if hasattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN"):
        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

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


def test_an_older_datasets_is_refused_with_the_command():
    """hub.py runs this check at import, before it touches datasets.List."""
    with pytest.raises(UserError, match=r"datasets 3.6.0 is installed.*pip install -U 'datasets>=4.0.0'"):
        hub.check_datasets_version("3.6.0")
    for ok in ("4.0.0", "4.1.0.dev0", datasets.__version__):
        hub.check_datasets_version(ok)


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


# --- 3. every hub config's split plan holds out its validation and test rows ---------------------------------
HUB_CONFIGS = sorted((ROOT / "configs" / "hub").glob("*.yaml")) + [
    ROOT / "configs" / "grid" / "colab_t4.yaml", ROOT / "configs" / "grid" / "one_gpu_80gb.yaml"]
COCO_IDS = list(range(101, 141))  # 40 COCO 2014 val images; 2017 val is a subset of them, as on the hub


def coco_rows(ids, style):
    name = "COCO_val2014_{:012d}.jpg" if style == 2014 else "{:012d}.jpg"
    return [{"question": "Describe.", "answer": [f"caption of {i}"] * 5, "id": n, "question_id": name.format(i)}
            for n, i in enumerate(ids)]


def qa(n_images, per_image, make):
    return [make(i, q) for i in range(n_images) for q in range(per_image)]


# source split -> fixture rows; several questions per image where the real set has them
PLAN_SOURCES = {
    "coco_caption2014": ("coco_caption2014", lambda: coco_rows(COCO_IDS, 2014)),
    "coco_caption": ("coco_caption", lambda: coco_rows(COCO_IDS[:8], 2017)),
    "vqav2": ("vqav2", lambda: qa(6, 2, lambda i, q: {
        "question": f"v{i}-{q}?", "multiple_choice_answer": "yes", "image_id": COCO_IDS[i],
        "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}] * 10})),
    "textvqa:train": ("textvqa", lambda: qa(6, 2, lambda i, q: {
        "question": f"t{i}-{q}?", "answers": ["a"] * 10, "image_id": f"{i:016x}"})),
    "textvqa": ("textvqa", lambda: qa(8, 2, lambda i, q: {
        "question": f"tv{i}-{q}?", "answers": ["a"] * 10, "image_id": f"{i + 100:016x}"})),
    "gqa": ("gqa", lambda: qa(4, 2, lambda i, q: {"id": f"{i}{q}", "imageId": f"n{i}", "question": f"g{i}-{q}?",
                                                  "answer": "yes"})),
    "ai2d": ("ai2d", lambda: [{"question": f"d{i}?", "options": ["a", "b"], "answer": "0"} for i in range(6)]),
    "scienceqa": ("scienceqa", lambda: [{"question": f"s{i}?", "choices": ["a", "b"], "answer": 1, "hint": ""}
                                        for i in range(6)]),
    "docvqa": ("docvqa", lambda: qa(4, 2, lambda i, q: {"questionId": f"{i}{q}", "question": f"p{i}-{q}?",
                                                        "answers": ["x"], "docId": 500 + i})),
}
SMALL = {"train": 4, "validation": 2, "test": 3}


def plan_of(config: Path) -> dict:
    cfg = yaml.safe_load(config.read_text())["data"]["hub"]
    me = cfg.get("max_examples")
    small = {k: min(v, SMALL.get(k, 2)) for k, v in me.items()} if isinstance(me, dict) else 3
    return {**cfg, "max_examples": small}


def fixture_files_for(plan: dict, tmp_path: Path) -> dict:
    files = {}
    for entry in {*plan.get("train", []), *plan.get("val", []), *plan.get("test", [])}:
        schema, rows = PLAN_SOURCES[entry]
        files[entry] = write_parquet(tmp_path / f"{entry.replace(':', '_')}.parquet", SCHEMAS[schema], rows())
        if entry == "gqa":
            files["gqa/images"] = write_parquet(tmp_path / "gqa_images.parquet", datasets.Features(
                {"id": datasets.Value("string"), "image": datasets.Image()}), [{"id": f"n{i}"} for i in range(4)])
    return files


def held_out_keys(ds) -> set:
    """Row identity, computed here and not by the loader: (image collection, image id), or the question
    text for data sets without image ids."""
    keys = set()
    for task, image_id, question in zip(ds["task"], ds["image_id"], ds["question"]):
        spec = hub.REGISTRY[task]
        keys.add((spec.image_source or task, image_id) if spec.id_column else (task, question))
    return keys


@pytest.mark.parametrize("config", HUB_CONFIGS, ids=lambda p: p.stem)
def test_config_split_plan_holds_out_val_and_test(config, tmp_path, caplog):
    plan = plan_of(config)
    data_files = fixture_files_for(plan, tmp_path)
    with caplog.at_level(logging.WARNING, logger="lit_vlm.hub"):
        dd = hub.load_hub_mix(**{**plan, "data_files": data_files, "cache_dir": str(tmp_path / "c")})
    keys = {s: held_out_keys(dd[s]) for s in hub.SPLITS}
    for split, entries in zip(hub.SPLITS, (plan["train"], plan["val"], plan["test"])):
        assert bool(entries) == (len(dd[split]) > 0), split  # every configured split got rows
    assert not keys["train"] & keys["validation"], sorted(keys["train"] & keys["validation"])[:3]
    assert not keys["train"] & keys["test"], sorted(keys["train"] & keys["test"])[:3]
    assert not keys["validation"] & keys["test"], sorted(keys["validation"] & keys["test"])[:3]
    assert not any("share" in r.getMessage() for r in caplog.records)


def test_an_overlapping_plan_is_caught(tmp_path, caplog):
    """The old stage-1 plan (train COCO 2014 val, validate on COCO 2017 val) shares every validation image."""
    plan = {"train": ["coco_caption2014"], "val": ["coco_caption"], "test": [],
            "max_examples": {"train": 40, "validation": 4}}
    with caplog.at_level(logging.WARNING, logger="lit_vlm.hub"):
        dd = hub.load_hub_mix(**plan, data_files=fixture_files_for(plan, tmp_path), cache_dir=str(tmp_path / "c"))
    assert held_out_keys(dd["validation"]) <= held_out_keys(dd["train"]) and len(dd["validation"]) == 4
    assert any("train and validation share 4 images" in r.getMessage() for r in caplog.records)


def test_one_source_in_two_splits_is_dealt_by_image(tmp_path):
    """TextVQA validation as val and as test: consecutive parts, and no image in both (2 questions per image)."""
    plan = {"train": [], "val": ["textvqa"], "test": ["textvqa"], "max_examples": {"validation": 3, "test": 4}}
    files = fixture_files_for(plan, tmp_path)
    dd = hub.load_hub_mix(**plan, data_files=files, seed=0, cache_dir=str(tmp_path / "c"))
    assert (len(dd["validation"]), len(dd["test"])) == (3, 4)
    assert not set(dd["validation"]["image_id"]) & set(dd["test"]["image_id"])
    with pytest.raises(UserError, match="give every part but the last a max_examples"):
        hub.load_hub_mix(**{**plan, "max_examples": {"test": 4}}, data_files=files, cache_dir=str(tmp_path / "c"))


# --- 4. real COCO ids; a seeded stream reads about the rows it keeps -----------------------------------------
def test_coco_image_id_is_the_file_names_not_the_row_index(tmp_path):
    rows = coco_rows([391895, 397133], 2014) + [{**coco_rows([397133], 2017)[0], "id": 2}]
    files = write_parquet(tmp_path / "coco.parquet", SCHEMAS["coco_caption2014"], rows)
    ds = hub.load_hub_split("coco_caption2014", data_files=files, cache_dir=str(tmp_path / "c"))
    assert ds["image_id"] == [391895, 397133, 397133]  # 2014 and 2017 file names agree; "id" (0, 1, 2) is unused


def test_shuffle_buffer_is_sized_from_the_rows_asked_for():
    assert [hub.shuffle_buffer_for(n) for n in (1, 4, 300, 2500, 40_000, 10**6, None)] == [
        1, 1, 75, 625, 10_000, 10_000, 10_000]


def test_seeded_stream_reads_about_the_rows_it_keeps(tmp_path):
    rows = [{"question": f"q{i}?", "answers": [f"a{i}"] * 10, "image_id": f"{i:016x}"} for i in range(400)]
    files = write_parquet(tmp_path / "t.parquet", SCHEMAS["textvqa"], rows)
    ds, stats = hub.load_hub_split("textvqa", data_files=files, max_examples=40, streaming=True, seed=0,
                                   cache_dir=str(tmp_path / "c"), return_stats=True)
    assert len(ds) == 40 and len(set(ds["answer"])) == 40
    assert ds["answer"] != [f"a{i}" for i in range(40)]  # shuffled, not the first rows in order
    assert 40 + 10 <= stats.read <= 40 + 10 + 2, stats.read  # the 10-row buffer, then one row per row kept
    _, whole = hub.load_hub_split("textvqa", data_files=files, max_examples=40, streaming=True, seed=0,
                                  shuffle_buffer=1000, cache_dir=str(tmp_path / "c"), return_stats=True)
    assert whole.read == 400  # a buffer larger than the split reads all of it first (the old 10,000 default)


# --- 5. licences as the cards state them; config headers say which evaluation splits they train on ------------
def test_docs_licences_are_the_registrys_card_licences():
    docs = (ROOT / "docs" / "hub.md").read_text()
    for name, spec in hub.REGISTRY.items():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{name}` |"))
        card = row.rstrip(" |").rsplit("|", 1)[1].strip()
        if spec.licence.startswith("none stated on the card"):
            assert card == "no licence stated on the card", name
        else:
            assert spec.licence.startswith(f"card: {card}"), (name, card, spec.licence)
    for clip in ("openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14-336"):
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{clip}` |"))
        assert row.rstrip(" |").endswith("no licence stated on the card"), clip


TRAINED_ON = {"vqav2": "VQAv2 *validation*", "coco_caption2014": "COCO 2014 *val*"}


@pytest.mark.parametrize("config", HUB_CONFIGS, ids=lambda p: p.stem)
def test_config_header_names_the_evaluation_splits_it_trains_on(config):
    text = config.read_text()
    header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    train = yaml.safe_load(text)["data"]["hub"]["train"]
    named = [TRAINED_ON[e] for e in train if e in TRAINED_ON]
    assert named, f"{config.name} trains on no evaluation split; update TRAINED_ON"
    for phrase in named:
        assert phrase in header, (config.name, phrase)
    assert "hub copy has" in header and "never report" in header  # why, and what it means for the numbers
