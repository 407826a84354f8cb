"""The synthetic word-level tokenizer and load_tokenizer: offline, deterministic, chat-template driven."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lit_vlm.data.synthetic import OCR_SYMBOLS, PALETTE, SHAPES
from lit_vlm.data.tokenizer import IMAGE_TOKEN, build_synthetic_tokenizer, load_tokenizer
from lit_vlm.errors import UserError


def squeeze(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def tok():
    return build_synthetic_tokenizer()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_same_ids_every_build(tok):
    again = build_synthetic_tokenizer()
    assert tok.get_vocab() == again.get_vocab()
    text = "how many red shapes are there? K7QZ"
    assert ids(tok, text) == ids(again, text)
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == 4


def test_ocr_string_splits_into_characters(tok):
    assert tok.convert_ids_to_tokens(ids(tok, "K7QZ")) == ["K", "7", "Q", "Z"]
    assert tok.convert_ids_to_tokens(ids(tok, "is there a blue square?")) == ["is", "there", "a", "blue", "square", "?"]


def test_closed_vocabulary_has_no_unknowns(tok):
    words = [*PALETTE, *SHAPES, *(s + "s" for s in SHAPES), "yes", "no", OCR_SYMBOLS]
    assert tok.unk_token_id not in ids(tok, " ".join(words))


@pytest.mark.parametrize("answer", ["K7QZ", "A", "4", "yes", "purple", "triangle", "3D4C"])
def test_decode_round_trip(tok, answer):
    decoded = tok.decode(ids(tok, answer) + [tok.eos_token_id], skip_special_tokens=True)
    assert squeeze(decoded) == answer


def test_chat_template_has_one_image_token_and_ends_with_generation_prompt(tok):
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_TOKEN}\nwhat is the text?"}], add_generation_prompt=True, tokenize=False
    )
    tokens = tok.convert_ids_to_tokens(ids(tok, prompt))
    assert tokens.count(IMAGE_TOKEN) == 1
    assert tokens[0] == "<bos>" and tokens.count("<bos>") == 1  # the template writes bos; nothing adds another
    assert tokens[-2:] == ["assistant", ":"]
    assert tok.unk_token not in tokens


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.chat_template == tok.chat_template
    text = f"<bos>user : {IMAGE_TOKEN}\nhow many shapes are there? assistant : 3"
    assert ids(loaded, text) == ids(tok, text)
    assert loaded.pad_token_id == tok.pad_token_id and loaded.eos_token_id == tok.eos_token_id
    assert squeeze(loaded.decode(ids(tok, "K7QZ"))) == "K7QZ"


def test_load_synthetic_by_name(tok):
    assert load_tokenizer("synthetic").get_vocab() == tok.get_vocab()


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does-not-exist"):
        load_tokenizer(str(tmp_path / "does-not-exist"))


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="nobody/no-such-tokenizer"):
        load_tokenizer("nobody/no-such-tokenizer")


def test_bare_tokenizer_is_completed(tmp_path):
    """A base-model tokenizer without pad, image token or chat template gets all three."""
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == "</s>"
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id not in (None, tok.unk_token_id)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_TOKEN}\nhello"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("ASSISTANT:") and prompt.count(IMAGE_TOKEN) == 1
    assert ids(tok, prompt).count(image_id) == 1
