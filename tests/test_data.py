"""Synthetic benchmark, image folders, processor and DataModule: offline, CPU, a few seconds."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vlm.data import synthetic
from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.data.processor import VLMProcessor
from lit_vlm.data.synthetic import (
    OCR_TASKS,
    REASONING_TASKS,
    build_synthetic_benchmark,
    chance_accuracy,
    draw_example,
    load_image_folder,
)
from lit_vlm.data.tokenizer import IMAGE_TOKEN, build_synthetic_tokenizer
from lit_vlm.errors import UserError

SMALL = dict(num_train=120, num_val=40, num_test=40)
CONTRACT = {
    "input_ids", "attention_mask", "labels", "prompt_ids", "prompt_mask", "question_ids", "question_mask",
    "pixel_values", "index", "answers", "questions", "families", "tasks",
}


@pytest.fixture(scope="module")
def tok():
    return build_synthetic_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    return VLMProcessor(tok, image_size=64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return build_synthetic_benchmark(tmp_path_factory.mktemp("bench"), **SMALL)


def image_hashes(ds):
    raw = ds.cast_column("image", type(ds.features["image"])(decode=False))
    return [hashlib.sha1(r["bytes"]).hexdigest() for r in raw["image"]]


def rows_of(ds):
    return ds.remove_columns("image").to_list()


# --- the benchmark -----------------------------------------------------------------------------------------
def test_schema_and_sizes(bench):
    assert list(bench) == ["train", "validation", "test"]
    assert [len(bench[s]) for s in bench] == [120, 40, 40]
    assert set(bench["train"].column_names) == {"image", "question", "answer", "family", "task", "image_id"}
    row = bench["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64)
    ids = [i for s in bench for i in bench[s]["image_id"]]
    assert len(set(ids)) == len(ids)  # unique across splits


def test_same_seed_same_bytes_and_rows(bench, tmp_path):
    again = build_synthetic_benchmark(tmp_path, **SMALL)
    for split in bench:
        assert image_hashes(again[split]) == image_hashes(bench[split])
        assert rows_of(again[split]) == rows_of(bench[split])


def test_other_seed_differs(bench, tmp_path):
    other = build_synthetic_benchmark(tmp_path, seed=1, **SMALL)
    assert set(image_hashes(other["train"])).isdisjoint(image_hashes(bench["train"]))


def test_splits_share_no_image(bench):
    train, val, test = (set(image_hashes(bench[s])) for s in ("train", "validation", "test"))
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)


def test_cross_split_duplicates_are_redrawn(monkeypatch, tmp_path):
    real = synthetic._draw

    def collide(split, index, seed, image_size, families, attempt, opts):
        # validation row 0, first attempt: a copy of train row 0
        return real("train" if (split, index, attempt) == ("validation", 0, 0) else split, index, seed,
                    image_size, families, attempt, opts)

    monkeypatch.setattr(synthetic, "_draw", collide)
    dd = build_synthetic_benchmark(tmp_path, num_train=4, num_val=2, num_test=1)
    assert image_hashes(dd["validation"])[0] not in image_hashes(dd["train"])


def test_cached_benchmark_is_reused(monkeypatch, tmp_path):
    first = build_synthetic_benchmark(tmp_path, **SMALL)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("synthetic-")

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached benchmark")

    monkeypatch.setattr(synthetic, "generate_rows", fail)
    second = build_synthetic_benchmark(tmp_path, **SMALL)
    assert rows_of(second["test"]) == rows_of(first["test"])
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters -> another fingerprint
        build_synthetic_benchmark(tmp_path, **{**SMALL, "num_test": 41})


def test_half_written_cache_is_not_used(tmp_path):
    build_synthetic_benchmark(tmp_path, **SMALL)
    folder = next(tmp_path.iterdir())
    (folder / "params.json").unlink()  # as if generation had been interrupted before completion
    dd = build_synthetic_benchmark(tmp_path, **SMALL)
    assert len(dd["train"]) == 120 and (folder / "params.json").exists()
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_row_is_a_pure_function_of_seed_split_index(bench):
    row = draw_example("test", 7)
    stored = bench["test"][7]
    assert (row["question"], row["answer"], row["family"], row["task"]) == (
        stored["question"], stored["answer"], stored["family"], stored["task"])
    assert np.array_equal(np.asarray(row["image"]), np.asarray(stored["image"]))


@pytest.fixture(scope="module")
def many():
    opts = synthetic.resolve_options()
    return [synthetic._draw("train", i, 0, 64, synthetic.FAMILIES, 0, opts) for i in range(3000)]


def test_all_question_types_appear(many):
    tasks = Counter((r["family"], r["task"]) for r in many)
    # fact has weight 0 by default (a grid config turns it on, tested on its own below)
    assert {t for f, t in tasks if f == "reasoning"} == set(REASONING_TASKS) - {"fact"}
    # highlight has weight 0 by default (the grid configs turn it on); every other OCR task appears
    assert {t for f, t in tasks if f == "ocr"} == set(OCR_TASKS) - {"highlight"}
    reasoning = sum(n for (f, _), n in tasks.items() if f == "reasoning")
    assert tasks[("reasoning", "spatial")] / reasoning <= 0.15  # the positional task stays a minority


def test_answers_are_balanced(many):
    for task in ("exist", "compare", "spatial"):
        answers = Counter(r["answer"] for r in many if r["task"] == task)
        assert set(answers) == {"yes", "no"}
        assert abs(answers["yes"] / sum(answers.values()) - 0.5) < 0.1, (task, answers)
    counts = Counter(r["answer"] for r in many if r["task"] == "count")
    assert set(counts) == {"1", "2", "3", "4"} and max(counts.values()) / sum(counts.values()) < 0.35


def test_ocr_answers_are_strings_of_the_alphabet(many):
    alphabet = synthetic.DEFAULT_OPTIONS["ocr_alphabet"]
    for r in many:
        if r["task"] == "read":
            assert 3 <= len(r["answer"]) <= 4 and set(r["answer"]) <= set(alphabet)


def test_chance_is_low_and_known(bench):
    chance = chance_accuracy(bench["train"])
    assert chance["ocr"] < 0.15 and chance["reasoning"] < 0.55
    assert chance_accuracy(bench["train"], by="family")["ocr"] <= chance["ocr"]


def test_every_question_and_answer_tokenises_without_unk(tok, many):
    wide = synthetic.resolve_options(
        colors=list(synthetic.PALETTE), shapes=list(synthetic.SHAPES), ocr_alphabet=synthetic.OCR_SYMBOLS
    )
    rows = many + [synthetic._draw("train", i, 0, 64, synthetic.FAMILIES, 0, wide) for i in range(300)]
    texts = sorted({r["question"] for r in rows} | {r["answer"] for r in rows})
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        assert tok.unk_token_id not in ids


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(colours=["red"]), "unknown synthetic task option"),
        (dict(colors=["red", "mauve"]), "colors="),
        (dict(reasoning_tasks={"juggling": 1.0}), "reasoning_tasks="),
        (dict(families=["reasoning", "poetry"]), "families="),
        (dict(num_train=-1), "num_train="),
        (dict(shape_radius=[0.4, 0.3]), "shape_radius="),
    ],
)
def test_bad_generator_options_are_user_errors(tmp_path, options, match):
    with pytest.raises(UserError, match=match):
        build_synthetic_benchmark(tmp_path, **{**SMALL, **options})


# --- the user's image folder ---------------------------------------------------------------------------------
def write_folder(root, n=3, splits=("train", "test")):
    for split in splits:
        (root / split).mkdir(parents=True)
        with open(root / split / "metadata.jsonl", "w") as f:
            for i in range(n):
                Image.new("RGB", (40, 30), (60 * i, 10, 10)).save(root / split / f"{i}.png")
                row = {"file_name": f"{i}.png", "question": "what is the text?", "answer": f"A{i}", "family": "ocr"}
                f.write(json.dumps(row) + "\n")


def test_image_folder_loads(tmp_path):
    write_folder(tmp_path)
    dd = load_image_folder(tmp_path)
    assert set(dd) == {"train", "test"}
    row = dd["test"][2]
    assert row["answer"] == "A2" and row["family"] == "ocr" and row["image"].size == (40, 30)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metadata.jsonl"):
        load_image_folder(tmp_path / "empty")
    write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "train" / "1.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"1\.png"):
        load_image_folder(tmp_path / "broken")


# --- the processor -----------------------------------------------------------------------------------------
def test_collate_follows_the_batch_contract(processor, tok, bench):
    rows = [dict(bench["train"][i], index=i) for i in range(6)]
    batch = processor.collate(rows)
    assert CONTRACT <= set(batch)
    B = len(rows)
    assert batch["pixel_values"].shape == (B, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["index"].tolist() == list(range(B)) and batch["index"].dtype == torch.long
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["prompt_ids"].shape == batch["prompt_mask"].shape
    assert batch["question_ids"].shape == batch["question_mask"].shape
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ((batch["input_ids"] == image_id).sum(1) == 1).all()
    assert ((batch["prompt_ids"] == image_id).sum(1) == 1).all()
    assert not (batch["question_ids"] == image_id).any()
    assert batch["answers"] == [r["answer"] for r in rows] and batch["families"] == [r["family"] for r in rows]


def test_labels_mask_everything_but_answer_and_eos(processor, tok, bench):
    rows = [bench["train"][i] for i in range(8)]
    batch = processor.collate(rows)
    for i, row in enumerate(rows):
        kept = batch["labels"][i][batch["labels"][i] != -100].tolist()
        answer = tok(row["answer"], add_special_tokens=False)["input_ids"]
        assert kept == answer + [tok.eos_token_id]
        n = int(batch["attention_mask"][i].sum())  # labelled positions are the last real positions
        assert batch["input_ids"][i, n - len(kept) : n].tolist() == kept


def test_padding_sides(processor, tok, bench):
    rows = [bench["train"][i] for i in range(8)]
    batch = processor.collate(rows)
    am, pm = batch["attention_mask"], batch["prompt_mask"]
    assert (am[:, 0] == 1).all() and (am[:, :-1] >= am[:, 1:]).all()  # right padded: ones then zeros
    assert (pm[:, -1] == 1).all() and (pm[:, :-1] <= pm[:, 1:]).all()  # left padded: zeros then ones
    assert (batch["input_ids"][am == 0] == tok.pad_token_id).all()
    assert (batch["prompt_ids"][pm == 0] == tok.pad_token_id).all()
    tail = tok.convert_tokens_to_ids(["assistant", ":"])  # every prompt ends with the generation prompt
    assert all(batch["prompt_ids"][i, -2:].tolist() == tail for i in range(len(rows)))
    for i in range(len(rows)):  # the prompt is the start of the training sequence
        prompt = batch["prompt_ids"][i][pm[i].bool()].tolist()
        assert batch["input_ids"][i, : len(prompt)].tolist() == prompt


def test_image_transform_resizes_and_normalises(processor):
    x = processor.image_to_tensor(Image.new("L", (100, 80), 255))
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.ones_like(x))
    x = processor.image_to_tensor(Image.new("RGB", (64, 64), (0, 0, 0)))
    assert torch.allclose(x, -torch.ones_like(x))


# --- the DataModule ----------------------------------------------------------------------------------------
def test_datamodule_loaders(processor, tmp_path):
    dm = VLMDataModule(data_dir=str(tmp_path), batch_size=8, eval_batch_size=16, processor=processor, **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 120
    train = next(iter(dm.train_dataloader()))
    assert CONTRACT <= set(train) and train["input_ids"].shape[0] == 8
    assert next(iter(dm.val_dataloader()))["index"].tolist() == list(range(16))  # evaluation keeps the order
    assert next(iter(dm.test_dataloader()))["index"].tolist() == list(range(16))
    again = VLMDataModule(data_dir=str(tmp_path), batch_size=8, processor=processor, **SMALL)
    again.setup("fit")  # shuffling is seeded: the same seed gives the same first batch
    assert next(iter(again.train_dataloader()))["index"].tolist() == train["index"].tolist()
    assert sorted(train["index"].tolist()) != list(range(8))


def test_datamodule_rejects_unknown_family_and_source():
    with pytest.raises(UserError, match="reasoning"):
        VLMDataModule(families=["reasoning", "poetry"])
    with pytest.raises(UserError, match="synthetic"):
        VLMDataModule(source="ftp")


def test_datamodule_folder_source(processor, tmp_path):
    write_folder(tmp_path / "mine", n=5)
    dm = VLMDataModule(source="folder", data_dir=str(tmp_path / "mine"), eval_batch_size=4, processor=processor)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["answers"] == ["A0", "A1", "A2", "A3"] and batch["pixel_values"].shape == (4, 3, 64, 64)
    with pytest.raises(UserError, match="validation"):
        dm.val_dataloader()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        VLMDataModule(source="folder", data_dir=str(tmp_path / "empty"), processor=processor).setup("fit")


def test_a_split_of_size_zero_is_left_out_and_reloads(tmp_path):
    for _ in range(2):  # generate, then load the cached copy
        dd = synthetic.build_synthetic_benchmark(tmp_path, num_train=8, num_val=0, num_test=4)
        assert list(dd) == ["train", "test"] and len(dd["train"]) == 8


def test_highlight_task_asks_for_the_red_character():
    opts = dict(ocr_layout="grid", ocr_length=[8, 8], ocr_lines=2, ocr_tasks={"highlight": 1})
    for index in (1, 3, 5):
        row = synthetic.draw_example("train", index, **opts)
        assert row["question"] == "what is the red character?" and len(row["answer"]) == 1
        pixels = np.asarray(row["image"]).reshape(-1, 3).astype(int)
        red = (pixels[:, 0] > 150) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)
        assert red.sum() > 5  # the one character drawn in the highlight ink


def test_shape_radius_fixes_object_size_and_keeps_the_default_stream():
    """Equal bounds draw every object at one size; the default leaves rows (and fingerprints) as they were."""
    opts = dict(reasoning_tasks={"count": 1.0}, max_shapes=6)
    record_default, record_fixed = [], []
    synthetic._reasoning(np.random.default_rng(0), "count", synthetic.resolve_options(**opts), 64, record_default)
    fixed = synthetic.resolve_options(**opts, shape_radius=[0.36, 0.36])
    synthetic._reasoning(np.random.default_rng(0), "count", fixed, 64, record_fixed)
    assert [r[1] for r in record_default] == [r[1] for r in record_fixed]  # same objects: one draw per radius
    row = synthetic.draw_example("train", 0, **opts)
    assert "shape_radius" not in synthetic.resolve_options(**opts)  # the default is not fingerprinted
    same = synthetic.draw_example("train", 0, **opts, shape_radius=[0.3, 0.42])
    assert np.array_equal(np.asarray(row["image"]), np.asarray(same["image"]))
    a = synthetic.draw_example("train", 0, **opts, shape_radius=[0.36, 0.36])
    assert not np.array_equal(np.asarray(row["image"]), np.asarray(a["image"]))


def test_fact_task_answers_the_names_digit_at_the_images_count():
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=20, fact_zipf=1.0, max_shapes=5)
    names, p, digits = synthetic.fact_table(20, 1.0, 0)
    asked = Counter()
    for split, seed in (("train", 0), ("test", 3)):  # one table for every split and data seed
        for i in range(0, 120, 2):
            record = []
            row = synthetic._draw(split, i, seed, 64, ("reasoning", "ocr"), 0, opts, record)
            name = row["question"].split()[2]
            assert row["task"] == "fact" and row["question"] == f"what is {name} of the shapes?"
            count = sum(r[0] == "object" for r in record)
            assert 1 <= count <= 5 and row["answer"] == str(digits[names.index(name), count])
            asked[names.index(name)] += 1
    assert asked[0] > asked[19]  # Zipf: the first name is asked far more often than the last
    assert np.isclose(p.sum(), 1) and p[0] / p[1] == pytest.approx(2.0)


def test_fact_task_keyed_on_colour_answers_the_names_digit_at_the_one_colour_drawn():
    colors = ["red", "green", "blue", "yellow"]
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=20, fact_key="color", colors=colors,
                                     max_shapes=3)
    names, _, digits = synthetic.fact_table(20, 1.0, 0)
    for i in range(40):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        name = row["question"].split()[2]
        assert row["question"] == f"what is {name} of the color?"
        drawn = {r[1][1] for r in record if r[0] == "object"}
        assert len(drawn) == 1 and 1 <= len(record) <= 3  # one colour, 1..max_shapes objects
        assert row["answer"] == str(digits[names.index(name), colors.index(drawn.pop())])
    assert "fact_key" not in synthetic.resolve_options(reasoning_tasks={"fact": 1.0})  # the default: as before
    with pytest.raises(UserError, match=r"fact_key='size': must be one of \['count', 'color', 'name'\]"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="size")


def test_fact_task_keyed_on_the_name_alone_answers_one_digit_per_name_whatever_the_image():
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_zipf=0.0, fact_key="name")
    names, _, digits = synthetic.fact_table(5, 0.0, 0)
    seen = {}
    for i in range(60):
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts)
        name = row["question"].split()[2].rstrip("?")
        assert row["question"] == f"what is {name}?"
        seen.setdefault(name, set()).add(row["answer"])
    # every name came up, always with its own digit, over images of any count and colours
    assert seen == {n: {str(digits[k, 0])} for k, n in enumerate(names)}
    two = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_key="name", fact_digits=2)
    row = synthetic._draw("train", 0, 0, 64, ("reasoning",), 0, two)
    k = names.index(row["question"].split()[2].rstrip("?"))
    assert row["answer"] == f"{digits[k, 0]}{digits[k, 1]}"  # the name's first digit, then its second
    assert "fact_digits" not in opts  # the default, 1, is not listed: fingerprints made before stay valid
    with pytest.raises(UserError, match=r"fact_digits=2: must be an integer in 1\.\.8 \(above 1 only with fact_key: name\)"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_digits=2)


def test_fact_task_shown_draws_the_names_symbol_as_the_one_red_character_in_the_shared_share_of_images():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={64: 0.5, 8: 0.5})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_zipf=0.0, fact_key="name",
                                     fact_shown=0.75, **grid)
    names, _, digits = synthetic.fact_table(5, 0.0, 0)
    alphabet = opts["ocr_alphabet"]
    shown = 0
    for i in range(200):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        k = names.index(row["question"].split()[2].rstrip("?"))
        assert row["answer"] == alphabet[digits[k, 0] % len(alphabet)]  # the name's own symbol, every time
        red = [r[1] for r in record if r[0] == "char" and r[4]]
        assert red in ([], [row["answer"]])  # no red character, or the answer alone in red
        shown += bool(red)
    assert 0.65 <= shown / 200 <= 0.85  # about fact_shown of the images show it
    assert opts["fact_shown"] == 0.75 and "fact_shown" not in synthetic.resolve_options(reasoning_tasks={"fact": 1.0})
    for bad in (dict(fact_key="count"), dict(fact_key="name", ocr_layout="free", ocr_lines=1, ocr_cells=None)):
        with pytest.raises(UserError, match=r"fact_shown=0\.5: must be a number in 0\.\.1 \(above 0 only with fact_key: name"):
            synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_shown=0.5, **{**grid, **bad})


def test_fact_shown_with_two_digits_shows_the_first_symbol_and_leaves_the_second_to_memory():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={8: 1.0})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_zipf=0.0, fact_key="name",
                                     fact_digits=2, fact_shown=1.0, fact_cells={32: 0.5, 16: 0.5}, **grid)
    names, _, digits = synthetic.fact_table(5, 0.0, 0)
    alphabet = opts["ocr_alphabet"]
    for i in range(50):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        k = names.index(row["question"].split()[2].rstrip("?"))
        # the image's symbol, then the digit the same name answers without fact_shown: only memory has it
        assert row["answer"] == alphabet[digits[k, 0] % len(alphabet)] + str(digits[k, 1])
        assert [r[1] for r in record if r[0] == "char" and r[4]] == [row["answer"][0]]
        assert synthetic.name_answer(opts, k) == row["answer"]


def test_fact_shown_by_name_shows_every_image_of_the_shown_names_and_none_of_the_others():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={8: 1.0})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=6, fact_zipf=0.0, fact_key="name",
                                     fact_shown=0.5, fact_shown_by="name", fact_cells={32: 1.0}, **grid)
    names, _, _ = synthetic.fact_table(6, 0.0, 0)
    seen = Counter()
    for i in range(120):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        k = names.index(row["question"].split()[2].rstrip("?"))
        red = [r[1] for r in record if r[0] == "char" and r[4]]
        assert red == ([row["answer"]] if k % 2 else [])  # ranks 1, 3, 5 always shown, 0, 2, 4 never
        seen[k % 2] += 1
    assert min(seen.values()) > 40  # both kinds drawn
    assert [synthetic.name_shown(0.25, k) for k in range(8)] == [False, False, False, True] * 2
    assert "fact_shown_by" not in synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name",
                                                            fact_shown=0.5, **grid)  # the default is not listed
    with pytest.raises(UserError, match=r"fact_shown_by='word': must be one of \['image', 'name'\]"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_shown_by="word", **grid)
    with pytest.raises(UserError, match="fact_shown_by='name'.*only with fact_shown above 0"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown_by="name", **grid)


def test_fact_hidden_scene_draws_shapes_where_the_answer_is_not_shown():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={64: 0.5, 8: 0.5})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_zipf=0.0, fact_key="name",
                                     fact_shown=0.5, fact_hidden="scene", **grid)
    kinds = Counter()
    for i in range(200):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        chars = [r for r in record if r[0] == "char"]
        red = [r[1] for r in chars if r[4]]
        # shown: an OCR grid whose one red character is the answer; hidden: shapes, no text at all
        assert (red == [row["answer"]]) if chars else all(r[0] != "char" for r in record) and record
        kinds["shown" if chars else "scene"] += 1
    assert 0.38 <= kinds["shown"] / 200 <= 0.62
    with pytest.raises(UserError, match=r"fact_hidden='blank': must be one of \['grid', 'scene'\]"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_hidden="blank", **grid)
    with pytest.raises(UserError, match="other than 'grid' only with fact_shown above 0"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_hidden="scene")


def test_fact_cells_set_the_shown_answers_sizes_apart_from_the_ocr_family():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={8: 1.0})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=5, fact_key="name", fact_shown=1.0,
                                     fact_cells={"64": 1}, **grid)  # a JSON key, as a YAML or CLI gives it
    assert opts["fact_cells"] == {64: 1.0} and opts["ocr_cells"] == {8: 1.0}
    for i in range(20):
        fact, ocr = [], []
        synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, fact)
        synthetic._draw("train", i, 0, 64, ("ocr",), 0, opts, ocr)
        # a 64 px cell holds one character; the OCR family keeps its 8 px cells (8 per line, 2 lines)
        assert len([r for r in fact if r[0] == "char"]) == 1 and len([r for r in ocr if r[0] == "char"]) == 16
    with pytest.raises(UserError, match="fact_cells=.*only with fact_shown above 0"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_cells={64: 1}, **grid)
    with pytest.raises(UserError, match="fact_cells: cell size 12 is not allowed"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_cells={12: 1}, **grid)


def test_fact_cells_by_name_draws_each_shown_name_at_one_size_spread_over_the_ranks():
    grid = dict(ocr_layout="grid", ocr_lines=2, ocr_length=[8, 8], ocr_cells={8: 1.0})
    opts = synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=12, fact_zipf=0.0, fact_key="name",
                                     fact_shown=0.5, fact_shown_by="name", fact_cells={32: 1, 16: 1, 8: 1},
                                     fact_cells_by="name", **grid)
    names, _, _ = synthetic.fact_table(12, 0.0, 0)
    sizes = {}
    for i in range(300):
        record = []
        row = synthetic._draw("train", i, 0, 64, ("reasoning",), 0, opts, record)
        k = names.index(row["question"].split()[2].rstrip("?"))
        red = [r for r in record if r[0] == "char" and r[4]]
        if k % 2:  # shown: the red character's half-width (r[5]) is the name's one size, every time
            assert len(red) == 1 and sizes.setdefault(k, red[0][5]) == red[0][5]
        else:
            assert not red
    assert sorted(sizes) == [1, 3, 5, 7, 9, 11]
    # the 6 shown names take the 3 sizes in turn, smallest first: their drawn half-widths follow that order
    cells = [synthetic.name_cell(opts["fact_cells"], 0.5, k) for k in sorted(sizes)]
    assert cells == [8, 16, 32] * 2
    half = [sizes[k] for k in sorted(sizes)]
    assert half[:3] == half[3:] and half[0] < half[1] < half[2]
    assert Counter(synthetic.name_cell({32: 3, 8: 1}, 1.0, k) for k in range(40)) == {32: 30, 8: 10}
    assert "fact_cells_by" not in synthetic.resolve_options(  # the default is not listed: fingerprints stay valid
        reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_cells={32: 1}, **grid)
    with pytest.raises(UserError, match=r"fact_cells_by='word': must be one of \['image', 'name'\]"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_shown_by="name",
                                  fact_cells={32: 1}, fact_cells_by="word", **grid)
    with pytest.raises(UserError, match="fact_cells_by='name'.*only with fact_shown_by: name and fact_cells set"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_key="name", fact_shown=0.5, fact_cells={32: 1},
                                  fact_cells_by="name", **grid)


def test_fact_split_asks_even_ranked_names_in_training_and_odd_ranked_ones_elsewhere():
    options = dict(reasoning_tasks={"fact": 1.0}, fact_names=8, fact_zipf=0.5, fact_key="name")
    split_opts = synthetic.resolve_options(**options, fact_split=True)
    names = synthetic.fact_table(8, 0.5, 0)[0]
    for split, parity in (("train", 0), ("validation", 1), ("test", 1)):
        for i in range(40):
            row = synthetic._draw(split, i, 0, 32, ("reasoning",), 0, split_opts)
            plain = synthetic._draw(split, i, 0, 32, ("reasoning",), 0, synthetic.resolve_options(**options))
            k, j = (names.index(r["question"].split()[2].rstrip("?")) for r in (row, plain))
            assert k % 2 == parity and k // 2 == j // 2  # the same draw, moved to its pair's name of this split
            assert row["answer"] == synthetic.name_answer(split_opts, k)
    with pytest.raises(UserError, match="fact_split=True: must be true or false .true needs an even fact_names, not 7"):
        synthetic.resolve_options(**{**options, "fact_names": 7}, fact_split=True)


def test_fact_options_leave_other_benchmarks_resolved_as_before():
    # caches and towers are fingerprinted on the resolved options: a benchmark without the fact task must not change
    for options in ({}, {"reasoning_tasks": {"count": 1.0}}):
        resolved = synthetic.resolve_options(**options)
        assert "fact" not in resolved["reasoning_tasks"] and not set(synthetic.FACT_OPTIONS) & set(resolved)
    with pytest.raises(UserError, match=r"fact_names=0: must be an integer in 1\.\.676"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_names=0)
    with pytest.raises(UserError, match=r"fact_zipf=-1"):
        synthetic.resolve_options(reasoning_tasks={"fact": 1.0}, fact_zipf=-1)
