"""Tokenizers: one offline-built for the synthetic benchmark, and any pretrained one, through one code path.

The synthetic tokenizer is a ``tokenizers`` WordLevel model over the benchmark's closed vocabulary, wrapped
as a ``PreTrainedTokenizerFast`` with a chat template, so prompts are built with ``apply_chat_template``
exactly as for a pretrained chat model. Each uppercase letter and digit is its own token, so an OCR answer
such as ``K7QZ`` is four tokens and the LLM spells it out.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lit_vlm.constants import IMAGE_TOKEN
from lit_vlm.data.synthetic import vocabulary
from lit_vlm.errors import UserError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
TEMPLATE_WORDS = ("user", "assistant", ":")

# "user : <image> question assistant :" then the answer and <eos>.
SYNTHETIC_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
# For pretrained tokenizers that ship without one.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_synthetic_tokenizer() -> PreTrainedTokenizerFast:
    """The synthetic benchmark's tokenizer: deterministic ids, no file or network access."""
    specials = list(SPECIAL_TOKENS.values()) + [IMAGE_TOKEN]
    words = [w for w in dict.fromkeys(list(TEMPLATE_WORDS) + vocabulary()) if w not in specials]
    vocab = {token: i for i, token in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex("[A-Z0-9]"), behavior="isolated")]
    )
    # Answers are one word or one character string, so decoding concatenates tokens: "K 7 Q Z" -> "K7QZ",
    # which keeps ANLS and CER honest (a space between characters is not a reading error).
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, extra_special_tokens={"image_token": IMAGE_TOKEN})
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    fast.chat_template = SYNTHETIC_CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def load_tokenizer(name_or_path: str = "synthetic", trust_remote_code: bool = False):
    """``"synthetic"`` builds the benchmark's tokenizer; anything else is a hub id or a local path.

    Either way the result has ``IMAGE_TOKEN`` as a special token, a pad token and a chat template.
    """
    if name_or_path == "synthetic":
        return build_synthetic_tokenizer()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    looks_local = Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~"))
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise UserError(f"tokenizer path {name_or_path!r} does not exist; give 'synthetic', a hub id or a folder")
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(name_or_path).expanduser()) if looks_local else name_or_path,
            trust_remote_code=trust_remote_code,
            local_files_only=offline,
        )
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load tokenizer {name_or_path!r} ({str(err).splitlines()[0][:160]}); "
            "give 'synthetic', a local folder, or a hub id reachable from this machine"
        ) from None
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if not tok.chat_template:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok
