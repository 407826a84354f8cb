"""Real-data and real-model loading paths, exercised offline with fixtures written here.

Data: one tiny parquet file per registry entry, in the exact column schema of the hub data set (the schema
is also listed in each spec's ``source_columns`` and in docs/hub.md), loaded through ``data_files=``.
Models: tiny SigLIP / CLIP dual-encoder checkpoints with the image processor's own preprocessor_config.json,
and tiny llama / qwen2 causal LMs with a chat-template tokenizer, all written with save_pretrained.
"""

import io
import json

import datasets
import pytest
import torch
from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from lit_vlm.data import hub
from lit_vlm.data.hub import FEATURES, REGISTRY, load_hub_mix, load_hub_split
from lit_vlm.errors import UserError

S, I64, I32 = Value("string"), Value("int64"), Value("int32")

# The hub schemas (column -> type) the specs read; extra columns are carried like the real files carry them.
SCHEMAS = {
    "coco_caption": Features({
        "question_id": S, "image": Image(), "question": S, "answer": List(S), "id": I64, "license": Value("int8"),
        "file_name": S, "coco_url": S, "height": I64, "width": I64, "date_captured": S}),
    "vqav2": Features({
        "question_type": S, "multiple_choice_answer": S,
        "answers": List({"answer": S, "answer_confidence": S, "answer_id": I64}),
        "image_id": I64, "answer_type": S, "question_id": I64, "question": S, "image": Image()}),
    "gqa": Features({
        "id": S, "imageId": S, "question": S, "answer": S, "fullAnswer": S, "isBalanced": Value("bool"),
        "groups": {"global": S, "local": S}, "entailed": S, "equivalent": S,
        "types": {"structural": S, "semantic": S, "detailed": S},
        "annotations": {"answer": S, "question": S, "fullAnswer": S},
        "semantic": List({"operation": S, "argument": S, "dependencies": List(I32)}), "semanticStr": S}),
    "ai2d": Features({"question": S, "options": List(S), "answer": S, "image": Image()}),
    "scienceqa": Features({
        "image": Image(), "question": S, "choices": List(S), "answer": Value("int8"), "hint": S, "task": S,
        "grade": S, "subject": S, "topic": S, "category": S, "skill": S, "lecture": S, "solution": S}),
    "textvqa": Features({
        "image_id": S, "question_id": I32, "question": S, "question_tokens": List(S), "image": Image(),
        "image_width": I32, "image_height": I32, "flickr_original_url": S, "flickr_300k_url": S,
        "answers": List(S), "image_classes": List(S), "set_name": S, "ocr_tokens": List(S)}),
    "docvqa": Features({
        "questionId": S, "question": S, "question_types": List(S), "image": Image(), "docId": I32,
        "ucsf_document_id": S, "ucsf_document_page_no": S, "answers": List(S), "data_split": S}),
}
SCHEMAS["coco_caption2014"] = SCHEMAS["coco_caption"]
GQA_IMAGES = Features({"id": S, "image": Image()})


def png(color=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buf, format=fmt)
    return buf.getvalue()


BAD = {"bytes": b"\x89PNG but truncated garbage", "path": None}


def img(color=(200, 30, 30), fmt="PNG"):
    return {"bytes": png(color, fmt), "path": None}


def filler(feature):
    """A plausible value of any feature type (the columns a spec does not read)."""
    if isinstance(feature, dict):
        return {k: filler(v) for k, v in feature.items()}
    if isinstance(feature, List):
        return [filler(feature.feature)]
    if isinstance(feature, Image):
        return img()
    if isinstance(feature, Value):
        if feature.dtype == "string":
            return "x"
        return True if feature.dtype == "bool" else 1
    raise TypeError(feature)


VQA10 = ["stop", "stop sign", "stop", "STOP", "stop", "red", "stop", "stop", "no", "stop"]

# The interesting columns of each fixture's rows; the rest is filled in from the schema.
ROWS = {
    "coco_caption": [
        {"question": "Please carefully observe the image and come up with a caption for the image",
         "answer": ["A red square.", "A square", "Red", "A box", "Colour"], "id": 0,
         "question_id": "COCO_val2014_000000000139.jpg"},  # "id" is a row index; the COCO id is in the file name
        {"question": "Please carefully observe the image and come up with a caption for the image",
         "answer": ["Green.", "b", "c", "d", "e"], "id": 1, "question_id": "000000000285.jpg"},  # 2017 naming
    ],
    "vqav2": [
        {"question": "What color is the sign?", "multiple_choice_answer": "red", "image_id": 42,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(
             ["red"] * 8 + ["orange", "dark red"])]},
        {"question": "How many?", "multiple_choice_answer": "2", "image_id": 43,
         "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]},
    ],
    "gqa": [
        {"id": "201307251", "imageId": "n161313", "question": "Is it red?", "answer": "yes"},
        {"id": "201640614", "imageId": "n235859", "question": "Which color is it?", "answer": "green"},
    ],
    "ai2d": [
        {"question": "Which stage comes first?", "options": ["egg", "larva", "pupa", "adult"], "answer": "2"},
        {"question": "What eats grass?", "options": ["cow", "lion"], "answer": "0"},
    ],
    "scienceqa": [
        {"question": "Which is a mammal?", "choices": ["shark", "whale"], "answer": 1, "hint": "Look closely."},
        {"question": "Pick one.", "choices": ["a", "b", "c"], "answer": 0, "hint": ""},
        {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
    ],
    "textvqa": [
        {"image_id": "0054c91397f2fe05", "question": "what does the sign say?", "answers": VQA10},
        {"image_id": "00685bc495504d61", "question": "what brand?", "answers": ["nokia"] * 10},
    ],
    "docvqa": [
        {"questionId": "337", "question": "what is the date?", "answers": ["1/8/93", "January 8, 1993"],
         "docId": 279},
        {"questionId": "338", "question": "who signed?", "answers": ["T.F. Riehl"], "docId": 280},
    ],
}
ROWS["coco_caption2014"] = ROWS["coco_caption"]


def write_parquet(path, features, rows, colors=None):
    full = []
    for i, row in enumerate(rows):
        r = {k: filler(v) for k, v in features.items()}
        if "image" in features:
            r["image"] = img(((40 * i) % 255, 100, 150))
        r.update(row)
        full.append(r)
    datasets.Dataset.from_list(full, features=features).to_parquet(str(path))
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


def fixture_files(name, tmp_path, rows=None):
    files = write_parquet(tmp_path / f"{name}.parquet", SCHEMAS[name], rows if rows is not None else ROWS[name])
    extra = {}
    if name == "gqa":
        images = [{"id": "n161313", "image": img((255, 0, 0))}, {"id": "n235859", "image": img((0, 255, 0))}]
        extra["images_data_files"] = write_parquet(tmp_path / "gqa_images.parquet", GQA_IMAGES, images)
    return files, extra


def test_fixture_schemas_match_the_specs():
    for name, spec in REGISTRY.items():
        assert tuple(SCHEMAS[name]) == spec.source_columns, name
        assert set(spec.required_columns()) <= set(spec.source_columns), name
        assert spec.licence and spec.family in hub.FAMILIES and spec.metric in hub.METRICS


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_loads_from_its_schema(name, tmp_path, cache):
    files, extra = fixture_files(name, tmp_path)
    ds, stats = load_hub_split(name, data_files=files, cache_dir=cache, return_stats=True, **extra)
    assert ds.features == FEATURES
    spec = REGISTRY[name]
    assert set(ds["task"]) == {name} and set(ds["family"]) == {spec.family} and set(ds["metric"]) == {spec.metric}
    for row in ds:
        assert isinstance(row["image"], PILImage.Image) and row["image"].size == (8, 8)
        assert row["question"].endswith(spec.prompt_suffix)
        assert row["answer"] and row["answers"] and isinstance(row["image_id"], int)
    expected = {
        "coco_caption": ("A red square.", 5, 139),
        "coco_caption2014": ("A red square.", 5, 139),
        "vqav2": ("red", 10, 42),
        "gqa": ("yes", 1, None),
        "ai2d": ("C", 1, 0),
        "scienceqa": ("B", 1, 0),
        "textvqa": ("stop", 10, None),
        "docvqa": ("1/8/93", 2, 279),
    }[name]
    first = ds[0]
    assert first["answer"] == expected[0] and len(first["answers"]) == expected[1]
    if expected[2] is not None:
        assert first["image_id"] == expected[2]
    if name == "scienceqa":  # the text-only question is dropped and counted
        assert len(ds) == 2 and stats.no_image == 1
        assert first["question"].startswith("Context: Look closely.\nWhich is a mammal?\nA. shark\nB. whale")
        assert ds[1]["question"].startswith("Pick one.")  # empty hint: no context line
    else:
        assert len(ds) == len(ROWS[name]) and stats.kept == len(ds)
    if name == "ai2d":
        assert "\nA. egg\nB. larva\nC. pupa\nD. adult\n" in first["question"]
    if name == "gqa":  # the join on imageId picked the right picture
        assert first["image"].getpixel((0, 0)) == (255, 0, 0) and ds[1]["image"].getpixel((0, 0)) == (0, 255, 0)
    if name.startswith("coco_caption"):  # the real COCO ids, from both file-name styles
        assert ds["image_id"] == [139, 285]
    if name == "textvqa":
        assert first["image_id"] == ds.with_format(None)[0]["image_id"]  # hashed string id, stable
        assert first["image_id"] == hub._int_id("0054c91397f2fe05", 0)


def test_vqa_targets_are_the_annotations(tmp_path, cache):
    files, _ = fixture_files("vqav2", tmp_path)
    row = load_hub_split("vqav2", data_files=files, cache_dir=cache)[0]
    assert row["answers"] == ["red"] * 8 + ["orange", "dark red"]
    assert row["question"] == "What color is the sign?" + hub.SHORT_ANSWER


@pytest.mark.parametrize("name", ["textvqa", "docvqa", "ai2d"])
def test_corrupt_image_is_skipped_and_counted_or_refused(name, tmp_path, cache):
    rows = [dict(r) for r in ROWS[name]] + [dict(ROWS[name][0])]
    files = write_parquet(tmp_path / "bad.parquet", SCHEMAS[name], rows)
    # overwrite the last row's image with bytes that are not an image
    table = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache).cast_column(
        "image", Image(decode=False)).to_list()
    table[-1]["image"] = BAD
    datasets.Dataset.from_list(table, features=SCHEMAS[name]).to_parquet(str(tmp_path / "bad2.parquet"))
    bad = str(tmp_path / "bad2.parquet")

    ds, stats = load_hub_split(name, data_files=bad, cache_dir=cache, return_stats=True)
    assert len(ds) == len(rows) - 1 and stats.bad_image == 1 and stats.kept == len(rows) - 1
    with pytest.raises(UserError, match=rf"{name}.*row {len(rows) - 1} has an image that cannot be decoded"):
        load_hub_split(name, data_files=bad, cache_dir=cache, on_bad_image="error")
    with pytest.raises(UserError, match="on_bad_image='maybe'"):
        load_hub_split(name, data_files=bad, cache_dir=cache, on_bad_image="maybe")


def test_missing_column_names_the_column_and_the_dataset(tmp_path, cache):
    features = Features({k: v for k, v in SCHEMAS["textvqa"].items() if k != "answers"})
    files = write_parquet(tmp_path / "t.parquet", features, [{"question": "q"}])
    with pytest.raises(UserError, match=r"dataset 'textvqa'.*no column 'answers'"):
        load_hub_split("textvqa", data_files=files, cache_dir=cache)


def test_max_examples_and_streaming_take_the_first_rows(tmp_path, cache):
    rows = [{"question": f"q{i}", "answers": [f"a{i}"] * 10, "image_id": f"{i:016x}"} for i in range(6)]
    files, _ = fixture_files("textvqa", tmp_path, rows)
    eager = load_hub_split("textvqa:train", data_files={"train": files}, max_examples=3, cache_dir=cache)
    stream = load_hub_split("textvqa", split="train", data_files={"train": files}, max_examples=3, streaming=True,
                            cache_dir=cache)
    assert eager["answer"] == stream["answer"] == ["a0", "a1", "a2"]
    assert len(load_hub_split("textvqa", data_files=files, max_examples=0, cache_dir=cache)) == 0
    shuffled = load_hub_split("textvqa", data_files=files, max_examples=6, seed=1, cache_dir=cache)
    assert sorted(shuffled["answer"]) == [f"a{i}" for i in range(6)]
    with pytest.raises(UserError, match="no split 'validation'"):
        load_hub_split("textvqa", data_files={"train": files}, cache_dir=cache)


def test_split_without_answers_is_refused(tmp_path, cache):
    files, _ = fixture_files("docvqa", tmp_path, [{"answers": []}, {"answers": []}])
    with pytest.raises(UserError, match="no usable rows.*2 without answer"):
        load_hub_split("docvqa", data_files=files, cache_dir=cache)


def test_hub_mix_builds_three_splits(tmp_path, cache):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text, _ = fixture_files("textvqa", tmp_path / "a")
    vqa, _ = fixture_files("vqav2", tmp_path / "b")
    ai2d, _ = fixture_files("ai2d", tmp_path)
    dd = load_hub_mix(["vqav2", "textvqa:train"], ["textvqa"], ["ai2d"],
                      max_examples={"train": 1, "textvqa": 2},
                      data_files={"vqav2": vqa, "textvqa:train": {"train": text}, "textvqa": text, "ai2d": ai2d},
                      cache_dir=cache)
    assert list(dd) == ["train", "validation", "test"]
    assert dd["train"]["task"] == ["vqav2", "textvqa"] and len(dd["validation"]) == 2
    assert dd["test"]["answer"] == ["C", "A"] and dd["train"].features == FEATURES
    empty = load_hub_mix(["vqav2"], [], [], data_files={"vqav2": vqa}, cache_dir=cache)
    assert len(empty["validation"]) == 0 and empty["validation"].features == FEATURES


def test_cached_mix_is_built_once(tmp_path, cache, monkeypatch):
    files, _ = fixture_files("ai2d", tmp_path)
    cfg = {"train": ["ai2d"], "val": [], "test": ["ai2d"], "max_examples": {"train": 1}, "data_files": {"ai2d": files},
           "cache_dir": cache}
    first = hub.load_hub_mix_cached(str(tmp_path / "data"), cfg)
    monkeypatch.setattr(hub, "load_hub_mix", lambda *a, **k: pytest.fail("rebuilt"))
    again = hub.load_hub_mix_cached(str(tmp_path / "data"), cfg)
    assert again["test"]["answer"] == first["test"]["answer"] == ["A"]  # one source: disjoint train / test parts
    assert again["train"]["answer"] == ["C"]
    assert hub.hub_fingerprint(cfg) != hub.hub_fingerprint({**cfg, "seed": 1})
    with pytest.raises(UserError, match="data.hub has unknown key 'tain'"):
        hub.load_hub_mix_cached(str(tmp_path / "data"), {"tain": ["ai2d"]})


def test_custom_spec_mapping(tmp_path, cache):
    files, _ = fixture_files("textvqa", tmp_path)
    spec = {"name": "my_ocr", "path": "me/my-ocr", "split": "train", "family": "ocr", "metric": "anls",
            "licence": "CC0", "answers_column": "answers", "filters": {"question": "what brand?"}}
    ds, stats = load_hub_split(spec, data_files={"train": files}, cache_dir=cache, return_stats=True)
    assert ds["answer"] == ["nokia"] and ds["metric"] == ["anls"] and stats.filtered == 1
    with pytest.raises(UserError, match="family='vision'"):
        load_hub_split({**spec, "family": "vision"}, data_files={"train": files})
    with pytest.raises(UserError, match="'colour' is not understood"):
        load_hub_split({**spec, "colour": 1}, data_files={"train": files})


def test_unknown_name_lists_the_registry():
    with pytest.raises(UserError, match="'vqa3' is not in the registry; allowed: coco_caption"):
        load_hub_split("vqa3")


def test_missing_dataset_offline_is_a_quick_user_error(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"name": "ghost", "path": "lit-vlm-nonexistent-org/no-such-dataset", "split": "train",
            "family": "ocr", "metric": "anls", "licence": "-", "answers_column": "answers"}
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(UserError, match=r"dataset 'ghost' cannot be loaded.*no-such-dataset.*offline"):
        load_hub_split(spec, cache_dir=cache)
    assert datasets.config.HF_HUB_OFFLINE == before  # the library's flags are restored after the call


def test_metric_for_tasks():
    assert type(hub.metric_for("textvqa")).__name__ == "VQAAccuracy"
    assert type(hub.metric_for("docvqa")).__name__ == "ANLS"
    assert type(hub.metric_for("ai2d")).__name__ == "MultipleChoiceAccuracy"
    with pytest.raises(UserError, match="'bleu' is not known"):
        hub.metric_for("bleu")


# --- pretrained parts by path ----------------------------------------------------------------------------------
VISION_SIZES = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=64)
TEXT_SIZES = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99)


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_pretrained_dual_encoder_tower_by_path(family, tmp_path):
    """A full SigLIP / CLIP checkpoint (like google/siglip-* and openai/clip-*) with its image processor."""
    import transformers

    from lit_vlm.model.vision import VisionConfig, VisionTower

    torch.manual_seed(0)
    if family == "siglip":
        model = transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION_SIZES, text_config=TEXT_SIZES))
        processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
        mean, prefix = (0.5, 0.5, 0.5), 0
    else:
        model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=VISION_SIZES, text_config=TEXT_SIZES,
                                                               projection_dim=16))
        processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        mean, prefix = (0.48145466, 0.4578275, 0.40821073), 1
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_mean"] == list(mean)

    tower = VisionTower(VisionConfig(pretrained=str(tmp_path), feature_layers=[-2]))  # the paper's layer
    assert tower.grid_side == 4 and tower.image_size == 32 and tower.num_prefix_tokens == prefix
    assert tower.image_mean == pytest.approx(mean) and tower.hidden_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, prefix:]
        torch.testing.assert_close(tower(x)[:, 0], ref)
    assert not any(p.requires_grad for p in tower.parameters())


def test_missing_pretrained_model_offline_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    from lit_vlm.model.vision import VisionConfig, VisionTower
    from lit_vlm.model.vlm import LLMConfig

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as if set before the import
    with pytest.raises(UserError, match="vision.pretrained='lit-vlm-nonexistent/tower' cannot be loaded"):
        VisionTower(VisionConfig(pretrained="lit-vlm-nonexistent/tower"))

    class Tok:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    with pytest.raises(UserError, match="llm.pretrained='lit-vlm-nonexistent/llm' cannot be loaded"):
        LLMConfig(pretrained="lit-vlm-nonexistent/llm").build(Tok())


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llm(path, model_type):
    """A tiny causal LM + a chat-template tokenizer, saved like a hub checkpoint (SmolLM2 = llama, Qwen2.5 = qwen2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "what", "is", "it", "red", "?", "\n"]
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(40)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                               tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return tok


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_pretrained_llm_and_tokenizer_by_path(model_type, tmp_path):
    from lit_vlm.model.vision import VisionConfig
    from lit_vlm.model.vlm import IMAGE_TOKEN, VLM, LLMConfig

    save_tiny_llm(tmp_path, model_type)
    from lit_vlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tmp_path))
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) not in (None, tok.unk_token_id)
    assert tok.pad_token_id is not None and tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": f"{IMAGE_TOKEN} what is it ?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user") and prompt.endswith("assistant\n")
    vision = VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    vlm = VLM(vision, LLMConfig(pretrained=str(tmp_path)), "avgpool", 4, tok)
    assert vlm.llm.config.model_type == model_type
    assert vlm.llm.get_input_embeddings().num_embeddings >= len(tok)
