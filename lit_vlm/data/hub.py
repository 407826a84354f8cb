"""Real VQA / caption data sets from the Hugging Face hub, mapped onto the kit's row schema.

Every data set is described by a :class:`HubDatasetSpec` (where it lives, which columns hold the question,
the answer(s) and the image, its task family, its metric and its licence) and loaded by
:func:`load_hub_split` into rows of the kit's schema (the synthetic benchmark's, plus ``answers``)::

    image     datasets.Image   the picture, kept as its original encoded bytes
    question  str              the prompt text (choices lettered, context and answer-style suffix added)
    answer    str              the training target: the majority answer (VQA), the first caption, the letter
    answers   list[str]        every acceptable answer: the 10 VQA annotations, all captions, the letter
    family    str              "reasoning" or "ocr"
    task      str              the data set's registry name, e.g. "textvqa"
    image_id  int              the source's image id (COCO: the number in the file name; string ids are hashed
                               to a stable int), else the row index
    metric    str              "vqa" | "anls" | "multiple_choice" | "exact": how to score this row

:func:`load_hub_mix` builds a ``DatasetDict`` (train / validation / test) from lists of names; a source split
named in several of them is read once and dealt into parts that share no image. Subsetting (``max_examples``)
takes the first N usable rows, after an optional seeded shuffle; ``streaming=True`` reads about those rows
instead of downloading the whole split (VQAv2's validation split alone is ~30 GB of parquet because every
question row repeats its image): the seeded shuffle buffer holds N / 4 rows, so ~1.25 N rows are read. The
selected rows are held in memory, so keep ``max_examples`` to what the machine holds (~150 KB per COCO-sized
image).

Offline: with ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) set at any time before the call, a data set
that is not in the local cache fails at once with a UserError instead of retrying the network.
The column names each spec relies on are listed in its ``source_columns`` and in docs/hub.md.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import datasets

from lit_vlm.constants import FAMILIES
from lit_vlm.errors import UserError
from lit_vlm.metrics import MultipleChoiceAccuracy, choice_letter  # noqa: F401  (re-exported for hub users)
from lit_vlm.metrics import metric_for as _metric_by_name

log = logging.getLogger("lit_vlm.hub")

# The oldest datasets release this module works with (pyproject's floor must say the same; tests check both) and
# the top-level names of datasets it uses, all present in 4.0.0. datasets.List first exists in 4.0.0: on 3.x the
# FEATURES below would fail with an AttributeError, so an older install is refused here with the command to run.
DATASETS_MIN = "4.0.0"
DATASETS_API = ("Dataset", "DatasetDict", "Features", "Image", "IterableDataset", "List", "Value",
                "concatenate_datasets", "config", "load_dataset", "load_from_disk")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def check_datasets_version(version: str = datasets.__version__) -> None:
    if _version_tuple(version) < _version_tuple(DATASETS_MIN):
        raise UserError(f"datasets {version} is installed; the hub loader needs datasets>={DATASETS_MIN} "
                        f"(it uses datasets.List): pip install -U 'datasets>={DATASETS_MIN}'")


check_datasets_version()

METRICS = ("vqa", "anls", "multiple_choice", "exact")
SPLITS = ("train", "validation", "test")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
CHOICE_ANSWER = "\nAnswer with the option's letter from the given choices directly."

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "family": datasets.Value("string"),
        "task": datasets.Value("string"),
        "image_id": datasets.Value("int64"),
        "metric": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class HubDatasetSpec:
    """How one hub data set maps onto the kit's rows. Column fields name the *source* columns."""

    name: str
    """Registry name; becomes the rows' ``task``."""
    path: str
    """Hub id passed to datasets.load_dataset (ignored when data_files are given)."""
    split: str
    """Default split of the source (``name:split`` or the split argument override it)."""
    family: str
    """"reasoning" or "ocr": which of the paper's two averages the rows count toward."""
    metric: str
    """"vqa" (VQA v2 accuracy over the answers), "anls", "multiple_choice" (letter accuracy) or "exact"."""
    licence: str
    """What the hub copy's card states ("none stated on the card" when it has none), then the original set's
    terms where we know them. Not legal advice: read the card and the original terms before use."""
    config: str | None = None
    """Config (subset) name of the source, if it has several."""
    old_paths: tuple[str, ...] = ()
    """Former hub ids, tried in order (one warning line) when ``path`` cannot be loaded: a cache filled under an
    old id is keyed by that id, so it still works offline after the repository moved."""
    question_column: str = "question"
    image_column: str = "image"
    answer_column: str | None = None
    """The single target answer (with choices_column: the correct option's index, letter or text)."""
    answers_column: str | None = None
    """All acceptable answers: a list of strings, or of dicts read through answers_field."""
    answers_field: str | None = None
    """Key of the answer string inside each dict of answers_column (VQAv2: "answer")."""
    choices_column: str | None = None
    """Multiple-choice options: lettered A., B., ... into the question; the target is the letter."""
    hint_column: str | None = None
    """Optional context put before the question as "Context: ..." when not empty (ScienceQA's hint)."""
    id_column: str | None = None
    """Image id column (int, or a string hashed to a stable int); None: the row's index."""
    id_pattern: str | None = None
    """Regex whose first group is the id inside id_column's text (COCO: the number in the file name)."""
    image_source: str | None = None
    """The image collection the ids index ("coco" for COCO captions and VQAv2): images are compared across data
    sets by (image_source, id) to find rows shared by train / validation / test. None: the data set's name."""
    prompt_suffix: str = ""
    """Appended to every question (LLaVA's answer-style instructions)."""
    filters: dict[str, Any] = field(default_factory=dict)
    """Keep only rows whose column equals the value."""
    images_config: str | None = None
    """Images stored in another config of the same repo (GQA), joined on join_column == images_id_column."""
    images_split: str | None = None
    join_column: str | None = None
    images_id_column: str = "id"
    drop_missing_image: bool = False
    """Rows whose image is null are dropped and counted (ScienceQA's text-only questions); else they are bad."""
    on_bad_image: str = "skip"
    """An image that cannot be decoded: "skip" (dropped, counted, logged) or "error" (UserError)."""
    source_columns: tuple[str, ...] = ()
    """Every column of the source split, for reference (what the fixtures and docs reproduce)."""
    description: str = ""

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"dataset {self.name!r}: family={self.family!r} is not allowed; allowed: {', '.join(FAMILIES)}")
        if self.metric not in METRICS:
            raise UserError(f"dataset {self.name!r}: metric={self.metric!r} is not allowed; allowed: {', '.join(METRICS)}")
        if self.on_bad_image not in ("skip", "error"):
            raise UserError(f"dataset {self.name!r}: on_bad_image={self.on_bad_image!r} is not allowed; allowed: skip, error")
        if self.answer_column is None and self.answers_column is None:
            raise UserError(f"dataset {self.name!r}: set answer_column or answers_column (none names the answers)")
        if self.choices_column is not None and self.answer_column is None:
            raise UserError(f"dataset {self.name!r}: choices_column needs answer_column (the correct option)")
        if self.images_config is not None and self.join_column is None:
            raise UserError(f"dataset {self.name!r}: images_config needs join_column (the image key of each row)")

    def required_columns(self) -> list[str]:
        """The source columns this spec reads (a split lacking any of them is refused)."""
        cols = [self.question_column]
        cols.append(self.join_column if self.images_config else self.image_column)
        for c in (self.answer_column, self.answers_column, self.choices_column, self.hint_column, self.id_column):
            if c is not None:
                cols.append(c)
        cols += [c for c in self.filters if c not in cols]
        return list(dict.fromkeys(cols))


def _vqa(name, path, split, family, licence, cols, **kw) -> HubDatasetSpec:
    return HubDatasetSpec(name=name, path=path, split=split, family=family, metric=kw.pop("metric", "vqa"),
                          licence=licence, source_columns=tuple(cols), **kw)


_COCO_CAP_COLUMNS = ("question_id", "image", "question", "answer", "id", "license", "file_name", "coco_url",
                     "height", "width", "date_captured")
_VQAV2_COLUMNS = ("question_type", "multiple_choice_answer", "answers", "image_id", "answer_type", "question_id",
                  "question", "image")
_GQA_COLUMNS = ("id", "imageId", "question", "answer", "fullAnswer", "isBalanced", "groups", "entailed",
                "equivalent", "types", "annotations", "semantic", "semanticStr")
_TEXTVQA_COLUMNS = ("image_id", "question_id", "question", "question_tokens", "image", "image_width",
                    "image_height", "flickr_original_url", "flickr_300k_url", "answers", "image_classes",
                    "set_name", "ocr_tokens")
_DOCVQA_COLUMNS = ("questionId", "question", "question_types", "image", "docId", "ucsf_document_id",
                   "ucsf_document_page_no", "answers", "data_split")
_AI2D_COLUMNS = ("question", "options", "answer", "image")
_SCIENCEQA_COLUMNS = ("image", "question", "choices", "answer", "hint", "task", "grade", "subject", "topic",
                      "category", "skill", "lecture", "solution")

# lmms-eval moved these from lmms-lab/ to lmms-lab-encoder/ (its PR #1416, July 2026); the hub redirects the old
# ids for now, and a cache filled under an old id is found through old_paths.
_MOVED = "lmms-lab-encoder/"


def _moved(spec: HubDatasetSpec) -> HubDatasetSpec:
    return replace(spec, old_paths=(spec.path.replace(_MOVED, "lmms-lab/"),)) if spec.path.startswith(_MOVED) else spec


# COCO-Caption's "id" column is a row index; the COCO image id is the number in the file name held by
# "question_id" (COCO_val2014_000000391895.jpg, 000000397133.jpg), as lmms-eval's coco_cap task parses it.
_COCO_FILE_ID = r"(\d+)\.\w+$"

_COCO_LICENCE = ("none stated on the card; original COCO: annotations CC BY 4.0, images under the Flickr terms "
                 "of use of their owners")

REGISTRY: dict[str, HubDatasetSpec] = {
    spec.name: _moved(spec)
    for spec in [
        # --- stage 1 (align): captions ---------------------------------------------------------------------
        _vqa("coco_caption", _MOVED + "COCO-Caption2017", "val", "reasoning", _COCO_LICENCE, _COCO_CAP_COLUMNS,
             metric="exact", answers_column="answer", id_column="question_id", id_pattern=_COCO_FILE_ID,
             image_source="coco",
             description="COCO 2017 val captions (5,000 images x 5 captions); the question column holds a "
                         "caption prompt. Stage-1 alignment data (exact match is not a caption metric)."),
        _vqa("coco_caption2014", _MOVED + "COCO-Caption", "val", "reasoning", _COCO_LICENCE, _COCO_CAP_COLUMNS,
             metric="exact", answers_column="answer", id_column="question_id", id_pattern=_COCO_FILE_ID,
             image_source="coco",
             description="COCO 2014 val captions (40,504 images x 5 captions), same schema: the larger stage-1 set."),
        # --- stage 2 (instruct): short-answer VQA ----------------------------------------------------------
        _vqa("vqav2", _MOVED + "VQAv2", "validation", "reasoning",
             "card: CC BY 4.0; images COCO (Flickr terms of use)", _VQAV2_COLUMNS,
             answer_column="multiple_choice_answer", answers_column="answers", answers_field="answer",
             id_column="image_id", image_source="coco", prompt_suffix=SHORT_ANSWER,
             description="VQA v2 validation (214k questions, 10 answers each): the kit trains on it (the "
                         "hub copy has no train split) and evaluates on GQA / TextVQA / DocVQA / AI2D instead."),
        # --- evaluation: reasoning -------------------------------------------------------------------------
        _vqa("gqa", _MOVED + "GQA", "testdev", "reasoning",
             "card: MIT; images from Visual Genome", _GQA_COLUMNS,
             config="testdev_balanced_instructions", images_config="testdev_balanced_images",
             images_split="testdev", join_column="imageId", images_id_column="id", answer_column="answer",
             id_column="imageId", prompt_suffix=SHORT_ANSWER,
             description="GQA test-dev balanced (12,578 questions on 398 images; images in a second config "
                         "joined on imageId). One answer: VQA accuracy = normalised exact match."),
        _vqa("ai2d", _MOVED + "ai2d", "test", "reasoning",
             "none stated on the card (AI2 Diagrams)", _AI2D_COLUMNS, metric="multiple_choice",
             answer_column="answer", choices_column="options", prompt_suffix=CHOICE_ANSWER,
             description="AI2D test (3,088 science diagrams, 4 options, answer = the option's index as a string)."),
        _vqa("scienceqa", "derek-thomas/ScienceQA", "test", "reasoning", "card: CC BY-SA 4.0; the original ScienceQA release says CC BY-NC-SA 4.0",
             _SCIENCEQA_COLUMNS, metric="multiple_choice", answer_column="answer", choices_column="choices",
             hint_column="hint", drop_missing_image=True, prompt_suffix=CHOICE_ANSWER,
             description="ScienceQA-IMG: the test questions that have an image (2,017 of 4,241); answer = int "
                         "index. Train (12,726 rows) and validation splits exist too."),
        # --- evaluation (and OCR training): text in images -------------------------------------------------
        _vqa("textvqa", _MOVED + "textvqa", "validation", "ocr",
             "none stated on the card; original TextVQA: CC BY 4.0, Open Images (CC BY 2.0 per image)", _TEXTVQA_COLUMNS,
             answers_column="answers", id_column="image_id", prompt_suffix=SHORT_ANSWER,
             description="TextVQA (train 34,602 / validation 5,000 questions, 10 answers each; the test split "
                         "has no answers). VQA accuracy over the 10 answers."),
        _vqa("docvqa", _MOVED + "DocVQA", "validation", "ocr",
             "card: Apache-2.0; pages from the UCSF Industry Documents Library (RRC challenge terms)",
             _DOCVQA_COLUMNS, metric="anls", config="DocVQA", answers_column="answers", id_column="docId",
             prompt_suffix=SHORT_ANSWER,
             description="DocVQA validation (5,349 questions on document pages; the test split has no "
                         "answers). ANLS over the answers."),
    ]
}


@dataclass
class HubLoadStats:
    """What happened to the source rows of one load."""

    task: str
    kept: int = 0
    bad_image: int = 0
    no_image: int = 0
    no_answer: int = 0
    filtered: int = 0
    other_slice: int = 0
    """Rows dropped because their image already belongs to another, full part of the same source split."""
    read: int = 0
    """Source rows read (streaming: pulled from the stream, including those that filled the shuffle buffer)."""


# --- resolving names ---------------------------------------------------------------------------------------------
def get_spec(name_or_spec: str | dict | HubDatasetSpec) -> tuple[HubDatasetSpec, str | None]:
    """A spec and the split named in ``name:split`` (else None)."""
    split = None
    if isinstance(name_or_spec, HubDatasetSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, dict):
        known = {f.name for f in fields(HubDatasetSpec)}
        unknown = sorted(set(name_or_spec) - known)
        if unknown:
            raise UserError(f"dataset spec key {unknown[0]!r} is not understood; allowed: {', '.join(sorted(known))}")
        try:
            spec = HubDatasetSpec(**{k: tuple(v) if k in ("source_columns", "old_paths") else v
                                     for k, v in name_or_spec.items()})
        except TypeError as e:
            raise UserError(f"dataset spec {name_or_spec!r} is incomplete: {e}") from None
    elif isinstance(name_or_spec, str):
        name, _, split = name_or_spec.partition(":")
        split = split or None
        if name not in REGISTRY:
            raise UserError(f"dataset {name!r} is not in the registry; allowed: {', '.join(REGISTRY)} "
                            "(optionally name:split), or a spec mapping")
        spec = REGISTRY[name]
    else:
        raise UserError(f"dataset {name_or_spec!r} must be a registry name or a spec mapping")
    spec.validate()
    return spec, split


# --- offline ------------------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    return any(_env_true(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextmanager
def offline_scope():
    """Honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE even when set after `datasets` was imported (its flags are
    read once at import): without this a missing data set retries the network for ~20 s before failing."""
    if not offline_requested():
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


# --- loading ------------------------------------------------------------------------------------------------------
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


def _builder_for(files) -> str:
    first = files if isinstance(files, str) else next(iter(files), "")
    for ext, builder in _BUILDERS.items():
        if str(first).endswith(ext):
            return builder
    raise UserError(f"data_files {first!r} has an unknown extension; allowed: {', '.join(_BUILDERS)}")


def _load_source(spec: HubDatasetSpec, split: str, streaming: bool, data_files, cache_dir, config=None):
    """datasets.load_dataset for the hub id, or for local files in the same schema; UserError on failure."""
    config = spec.config if config is None else config
    try:
        with offline_scope():
            if data_files is not None:
                files = data_files if isinstance(data_files, dict) else {split: data_files}
                if split not in files:
                    raise UserError(f"dataset {spec.name!r}: data_files has no split {split!r}; it has {', '.join(files)}")
                return datasets.load_dataset(_builder_for(files[split]), data_files={split: files[split]}, split=split,
                                             streaming=streaming, cache_dir=cache_dir)
            return _load_hub_id(spec, config, split, streaming, cache_dir)
    except UserError:
        raise
    except _LOAD_ERRORS as e:
        where = f"data_files {data_files!r}" if data_files is not None else f"{spec.path!r} (config {config}, split {split})"
        hint = " [offline: HF_HUB_OFFLINE is set and it is not in the local cache]" if offline_requested() else ""
        also = f"; its former id {', '.join(spec.old_paths)} failed too" if data_files is None and spec.old_paths else ""
        raise UserError(f"dataset {spec.name!r} cannot be loaded from {where}: {_reason(e)}{also}{hint}") from None


_LOAD_ERRORS = (OSError, ValueError, ConnectionError, KeyError)  # DatasetNotFoundError is a FileNotFoundError


def _reason(e: BaseException) -> str:
    return next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)[:240]


def _load_hub_id(spec: HubDatasetSpec, config, split, streaming, cache_dir):
    """The current id; when it fails (offline and not cached, not found), each former id in turn, with one warning
    line naming both. The current id's error is the one raised when every id fails."""
    try:
        return datasets.load_dataset(spec.path, config, split=split, streaming=streaming, cache_dir=cache_dir)
    except _LOAD_ERRORS as first:
        for old in spec.old_paths:
            try:
                ds = datasets.load_dataset(old, config, split=split, streaming=streaming, cache_dir=cache_dir)
            except _LOAD_ERRORS:
                continue
            log.warning("dataset %s: %s cannot be loaded (%s); using its former id %s, which loaded (local cache or "
                        "the hub's redirect)", spec.name, spec.path, _reason(first), old)
            return ds
        raise first


def _columns(ds) -> list[str] | None:
    if getattr(ds, "column_names", None) is not None:
        return list(ds.column_names)
    if getattr(ds, "features", None) is not None:
        return list(ds.features)
    return None


def _check_columns(spec: HubDatasetSpec, columns: list[str], needed: list[str], what: str = "") -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(
            f"dataset {spec.name!r} ({spec.path}{what}) has no column {missing[0]!r} that its spec reads; "
            f"it has: {', '.join(columns)}"
        )


def _raw_image(ds, column: str):
    """The image column as {"bytes", "path"} dicts (no decoding) when the features say it is an Image."""
    features = getattr(ds, "features", None)
    if features is not None and isinstance(features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _image_bytes(value) -> bytes | None:
    """Encoded bytes of an image cell: a {"bytes", "path"} dict, raw bytes, a path, or a PIL image."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        path = value.get("path")
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and os.path.isfile(value):
        with open(value, "rb") as f:
            return f.read()
    if hasattr(value, "save"):  # a PIL image (e.g. a source without features)
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    return None


def decodes(data: bytes) -> bool:
    """True when the bytes decode to an image (JPEGs decoded at reduced scale: fast, still catches corruption)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return True
    except Exception:  # noqa: BLE001 - UnidentifiedImageError, truncated file, decompression bomb, ...
        return False


def _int_id(value, index: int) -> int:
    if value is None:
        return index
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d{1,18}", text):
        return int(text)
    return int(hashlib.sha1(text.encode()).hexdigest()[:15], 16)  # stable, fits int64


def image_id_of(spec: HubDatasetSpec, row: dict, index: int) -> int:
    """The row's image id: id_column (through id_pattern when set), else the row index."""
    value = row.get(spec.id_column) if spec.id_column else None
    if value is not None and spec.id_pattern:
        match = re.search(spec.id_pattern, str(value))
        value = match.group(1) if match else value  # no match: the whole text, hashed to a stable int
    return _int_id(value, index)


def _answer_list(spec: HubDatasetSpec, row: dict) -> list[str]:
    if spec.answers_column is None:
        return []
    raw = row.get(spec.answers_column)
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    out = []
    for item in raw:
        if isinstance(item, dict):
            item = item.get(spec.answers_field or "answer")
        if item is not None and str(item).strip():
            out.append(str(item).strip())
    return out


def _choice_index(answer, choices: list[str]) -> int | None:
    if answer is None:
        return None
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        text = str(answer).strip()
        if re.fullmatch(r"\d+", text):
            index = int(text)
        elif len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
            index = LETTERS.index(text.upper())
        elif text in choices:
            index = choices.index(text)
        else:
            return None
    return index if 0 <= index < len(choices) else None


def format_row(spec: HubDatasetSpec, row: dict) -> tuple[str, str, list[str]] | None:
    """(question, answer, answers) of a source row; None when it has no usable answer."""
    question = str(row.get(spec.question_column) or "").strip()
    if spec.hint_column and str(row.get(spec.hint_column) or "").strip():
        question = f"Context: {str(row[spec.hint_column]).strip()}\n{question}"
    if spec.choices_column is not None:
        choices = [str(c) for c in (row.get(spec.choices_column) or [])]
        index = _choice_index(row.get(spec.answer_column), choices)
        if index is None:
            return None
        question += "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        letter = LETTERS[index]
        return question + spec.prompt_suffix, letter, [letter]
    answers = _answer_list(spec, row)
    answer = row.get(spec.answer_column) if spec.answer_column else None
    answer = str(answer).strip() if answer is not None and str(answer).strip() else None
    if answer is None and answers:
        answer = Counter(answers).most_common(1)[0][0]  # majority; ties keep the first answer given
    if answer is None:
        return None
    return question + spec.prompt_suffix, answer, answers or [answer]


def _images_lookup(spec, split, streaming, images_data_files, cache_dir):
    """GQA-style join: image key -> encoded bytes, from the images config (always loaded in full)."""
    images = _load_source(spec, spec.images_split or split, False, images_data_files, cache_dir, config=spec.images_config)
    _check_columns(spec, _columns(images) or [], [spec.images_id_column, spec.image_column], f", {spec.images_config}")
    images = _raw_image(images.select_columns([spec.images_id_column, spec.image_column]), spec.image_column)
    ids = images[spec.images_id_column]
    index = {str(k): i for i, k in enumerate(ids)}
    return lambda key: (_image_bytes(images[index[str(key)]][spec.image_column]) if str(key) in index else None)


def shuffle_buffer_for(rows: int | None) -> int:
    """Streaming shuffle buffer for a request of ``rows`` usable rows: a quarter of them (at least 1, at most
    10,000; 10,000 when all rows are asked for). A seeded stream fills the buffer before its first row, so it
    reads about rows + buffer source rows (plus skipped ones): ~375 for a 300-row test, not the whole split."""
    return 10_000 if rows is None else max(1, min(10_000, -(-rows // 4)))


def load_hub_split(
    name_or_spec: str | dict | HubDatasetSpec,
    split: str | None = None,
    max_examples: int | None = None,
    streaming: bool = False,
    data_files=None,
    *,
    images_data_files=None,
    seed: int | None = None,
    on_bad_image: str | None = None,
    cache_dir: str | None = None,
    shuffle_buffer: int | None = None,
    return_stats: bool = False,
):
    """One split of a hub data set as a ``datasets.Dataset`` in the kit's schema (see the module docstring).

    Args:
        name_or_spec: a registry name (``"textvqa"`` or ``"textvqa:train"``), a spec mapping, or a spec.
        split: the source split (default: ``name:split``, else the spec's).
        max_examples: keep the first N usable rows (after the shuffle when ``seed`` is set); None keeps all.
        streaming: read rows lazily from the hub and stop after ``max_examples`` (no full download).
        data_files: local files in the source's exact schema (a path, a list, or {split: files}); the hub
            is not contacted. The file type comes from the extension (.parquet, .json(l), .csv, .arrow).
        images_data_files: for specs with ``images_config`` (GQA): local files of the images config.
        seed: shuffle the source before taking rows (streaming: a buffer of :func:`shuffle_buffer_for` rows).
        on_bad_image: override the spec's "skip" | "error" for images that cannot be decoded.
        cache_dir: the datasets cache folder (default: HF_DATASETS_CACHE).
        shuffle_buffer: the streaming shuffle buffer in rows (default: sized from ``max_examples``).
        return_stats: also return a :class:`HubLoadStats`.
    """
    spec, named_split = get_spec(name_or_spec)
    split = split or named_split or spec.split
    parts, stats, _ = _load_slices(spec, split, [max_examples], streaming, data_files, images_data_files, seed,
                                   on_bad_image, cache_dir, shuffle_buffer)
    return (parts[0], stats) if return_stats else parts[0]


def _load_slices(spec, split, quotas, streaming, data_files, images_data_files, seed, on_bad_image, cache_dir,
                 shuffle_buffer):
    """One read of a source split, dealt into consecutive slices of ``quotas`` usable rows (None: all the rest)
    that share no image: a row whose image already went to a full slice is dropped (``other_slice``).
    Returns (datasets, stats, image keys per slice)."""
    if on_bad_image is not None:
        spec = replace(spec, on_bad_image=on_bad_image)
        spec.validate()
    for q in quotas:
        if q is not None and (not isinstance(q, int) or isinstance(q, bool) or q < 0):
            raise UserError(f"max_examples={q!r} must be a non-negative integer or null")
    if None in quotas[:-1]:
        raise UserError(f"dataset {spec.name!r} split {split!r} is dealt into {len(quotas)} disjoint parts "
                        "(train / validation / test); give every part but the last a max_examples")
    total = None if quotas[-1] is None else sum(quotas)
    source = _load_source(spec, split, streaming, data_files, cache_dir)
    columns = _columns(source)
    if columns is None and streaming:  # a stream without declared features: look at its first row
        columns = list(next(iter(source), {}).keys())
    _check_columns(spec, columns or [], spec.required_columns(), f", split {split}")
    source = source.select_columns(spec.required_columns())
    if not spec.images_config:
        source = _raw_image(source, spec.image_column)
    stats = HubLoadStats(task=spec.name)
    if streaming:  # count the rows the stream yields upstream of the shuffle buffer

        def _count(row):
            stats.read += 1
            return row

        source = source.map(_count)
    if seed is not None:
        buffer = shuffle_buffer or shuffle_buffer_for(total)
        source = source.shuffle(seed=seed, buffer_size=buffer) if streaming else source.shuffle(seed=seed)
    lookup = _images_lookup(spec, split, streaming, images_data_files, cache_dir) if spec.images_config else None

    slices = [{k: [] for k in FEATURES} for _ in quotas]
    owner: dict[int, int] = {}  # image id -> the slice that holds its rows
    full = [q is not None and q == 0 for q in quotas]
    for index, row in enumerate(source):
        if not streaming:
            stats.read = index + 1
        if all(full):
            break
        if any(row.get(c) != v for c, v in spec.filters.items()):
            stats.filtered += 1
            continue
        formatted = format_row(spec, row)
        if formatted is None:
            stats.no_answer += 1
            continue
        raw = lookup(row[spec.join_column]) if lookup else row.get(spec.image_column)
        data = _image_bytes(raw)
        if data is None and spec.drop_missing_image:
            stats.no_image += 1
            continue
        if data is None or not decodes(data):
            if spec.on_bad_image == "error":
                what = "has no image" if data is None else "has an image that cannot be decoded"
                raise UserError(
                    f"dataset {spec.name!r} split {split!r}: row {index} {what}; set on_bad_image: skip to drop "
                    "such rows (they are counted)"
                )
            stats.bad_image += 1
            continue
        image_id = image_id_of(spec, row, index)
        target = owner.setdefault(image_id, full.index(False))
        if full[target]:
            stats.other_slice += 1
            continue
        question, answer, answers = formatted
        cols = slices[target]
        cols["image"].append({"bytes": data, "path": None})
        cols["question"].append(question)
        cols["answer"].append(answer)
        cols["answers"].append(answers)
        cols["family"].append(spec.family)
        cols["task"].append(spec.name)
        cols["image_id"].append(image_id)
        cols["metric"].append(spec.metric)
        stats.kept += 1
        full[target] = quotas[target] is not None and len(cols["task"]) >= quotas[target]
    if stats.bad_image or stats.no_image or stats.no_answer:
        log.warning("dataset %s split %s: kept %d rows; skipped %d undecodable images, %d rows without image, "
                    "%d without answer", spec.name, split, stats.kept, stats.bad_image, stats.no_image, stats.no_answer)
    for q, cols in zip(quotas, slices):
        if not cols["task"] and (q is None or q > 0):
            part = "" if len(quotas) == 1 else f" for one of its {len(quotas)} disjoint parts"
            raise UserError(
                f"dataset {spec.name!r} split {split!r} gave no usable rows{part} ({stats.kept} kept, "
                f"{stats.bad_image} bad images, {stats.no_image} without image, {stats.no_answer} without answer, "
                f"{stats.filtered} filtered out): a test split without public answers cannot be scored; use another split"
            )
    parts = [datasets.Dataset.from_dict(cols, features=FEATURES) for cols in slices]
    keys = [{image_key(spec, split, i) for i in cols["image_id"]} for cols in slices]
    return parts, stats, keys


def image_key(spec: HubDatasetSpec, split: str, image_id: int) -> tuple:
    """What identifies an image across data sets: (collection, id); a row index only within its own split."""
    if spec.id_column is None:
        return (spec.name, split, image_id)
    return (spec.image_source or spec.name, image_id)


def _per(value, entry: str, split: str):
    if isinstance(value, dict):
        return value.get(entry, value.get(split))
    return value


def load_hub_mix(
    train: list,
    val: list,
    test: list,
    max_examples: int | dict | None = None,
    streaming: bool = False,
    data_files: dict | None = None,
    *,
    seed: int | None = None,
    on_bad_image: str | None = None,
    cache_dir: str | None = None,
    shuffle_buffer: int | None = None,
) -> datasets.DatasetDict:
    """train / validation / test, each the concatenation of its data sets in the kit's schema.

    Entries are registry names (``"textvqa:train"`` picks the source split) or spec mappings.
    ``max_examples`` is an int (per data set), or a dict keyed by entry (``"textvqa:train"``) and/or by
    "train" / "validation" / "test" (the entry wins). ``data_files`` maps an entry to local files.
    A source split named in more than one place (TextVQA validation as val and as test) is read once and dealt
    into consecutive parts in the order train, validation, test that share no image, so validation never
    holds test rows. Images that still appear in two splits (two data sets on one image collection, e.g. COCO)
    are reported in one warning line.
    """
    plan: dict[tuple, list] = {}  # one source split -> its places [(split, position, quota)]
    specs = {}
    for split, entries in zip(SPLITS, (train, val, test)):
        for pos, entry in enumerate(entries or []):
            key = entry if isinstance(entry, str) else entry.get("name", "") if isinstance(entry, dict) else entry.name
            spec, named = get_spec(entry)
            source_split = named or spec.split
            files = (data_files or {}).get(key)
            images_files = (data_files or {}).get(f"{key}/images")
            group = (repr(spec), source_split, repr(files), repr(images_files))
            specs[group] = (spec, source_split, files, images_files)
            plan.setdefault(group, []).append((split, pos, _per(max_examples, key, split)))
    placed: dict[str, dict[int, tuple]] = {s: {} for s in SPLITS}
    for group, places in plan.items():
        spec, source_split, files, images_files = specs[group]
        parts, _, keys = _load_slices(spec, source_split, [q for _, _, q in places], streaming, files, images_files,
                                      seed, on_bad_image, cache_dir, shuffle_buffer)
        if len(places) > 1:
            log.info("dataset %s split %s: read once, dealt into disjoint parts for %s", spec.name, source_split,
                     ", ".join(f"{s} ({len(p)} rows)" for (s, _, _), p in zip(places, parts)))
        for (split, pos, _), part, k in zip(places, parts, keys):
            placed[split][pos] = (part, k)
    out, seen = {}, {}
    for split in SPLITS:
        parts = [placed[split][pos][0] for pos in sorted(placed[split])]
        seen[split] = set().union(*(placed[split][pos][1] for pos in placed[split]))
        if not parts:
            out[split] = datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)
        else:
            out[split] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        shared = seen[a] & seen[b]
        if shared:
            log.warning("%s and %s share %d images (e.g. %s): scores on %s are not held out", a, b, len(shared),
                        sorted(shared, key=str)[0], b)
    return datasets.DatasetDict(out)


def hub_fingerprint(hub: dict) -> str:
    """A short hash of a hub data configuration (the arguments of load_hub_mix)."""
    import json

    def local(files):  # local data_files: their sizes and times count too
        if isinstance(files, dict):
            return {k: local(v) for k, v in files.items()}
        if isinstance(files, (list, tuple)):
            return [local(f) for f in files]
        return [files, os.path.getsize(files), os.path.getmtime(files)] if isinstance(files, str) and os.path.isfile(files) else files

    text = json.dumps({**hub, "data_files": local(hub.get("data_files")), "_version": 2}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_hub_mix_cached(data_dir: str, hub: dict) -> datasets.DatasetDict:
    """:func:`load_hub_mix` (``**hub``) built once and kept under ``data_dir/hub-<fingerprint>`` (save_to_disk),
    so a grid's 20 cells stream the hub once. The folder is written to a temporary name, then renamed."""
    import shutil
    import uuid
    from pathlib import Path

    allowed = {"train", "val", "test", "max_examples", "streaming", "data_files", "seed", "on_bad_image", "cache_dir",
               "shuffle_buffer"}
    unknown = sorted(set(hub) - allowed)
    if unknown:
        raise UserError(f"data.hub has unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    folder = Path(data_dir) / f"hub-{hub_fingerprint(hub)}"
    if (folder / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(folder))
    mix = load_hub_mix(hub.get("train", []), hub.get("val", []), hub.get("test", []),
                       **{k: v for k, v in hub.items() if k not in ("train", "val", "test")})
    tmp = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
    # an empty split must still be written as one (empty) shard, or load_from_disk cannot read it back
    mix.save_to_disk(str(tmp), num_shards={k: 1 for k, v in mix.items() if len(v) == 0} or None)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder))


# --- scoring ------------------------------------------------------------------------------------------------------
def metric_for(metric_or_task: str):
    """A fresh torchmetrics Metric for a metric name ("vqa", ...) or a registry task ("textvqa")."""
    return _metric_by_name(REGISTRY[metric_or_task].metric if metric_or_task in REGISTRY else metric_or_task)


def spec_table() -> list[dict]:
    """The registry as rows (for docs and ``--help`` output)."""
    return [{k: v for k, v in asdict(s).items() if k in ("name", "path", "config", "split", "family", "metric", "licence")}
            for s in REGISTRY.values()]
