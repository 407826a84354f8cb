"""VLM: LLM building, splicing, padding invariance, generation, gradients, and question conditioning."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lit_vlm.errors import UserError
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import IMAGE_TOKEN, VLM, LLMConfig

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", IMAGE_TOKEN]
WORDS = [f"w{i}" for i in range(27)]
VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      feature_layers=[1, -1])
LLM = LLMConfig(hidden_size=32, num_layers=2, num_heads=4)


def make_tokenizer(words=WORDS):
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", additional_special_tokens=[IMAGE_TOKEN])


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def make_vlm(tok, compressor="avgpool", V=4, llm=LLM, sharpen=True, **kw):
    torch.manual_seed(0)
    m = VLM(VISION, llm, compressor, V, tok, **kw).eval()
    if sharpen:  # HF's 0.02 init gives near-uniform logits; larger weights make greedy decoding non-trivial
        with torch.no_grad():
            for p in list(m.llm.parameters()) + list(m.projector.parameters()):
                if p.dim() > 1:
                    p.normal_(0, 0.4)
    return m


def ids(tok, texts):
    return [tok(t).input_ids for t in texts]


def pad(rows, value, side):
    n = max(map(len, rows))
    fill = lambda r: [value] * (n - len(r))  # noqa: E731
    return torch.tensor([(fill(r) + r) if side == "left" else (r + fill(r)) for r in rows])


def batch(tok, prompts, answers=None, questions=None, side="right", seed=0):
    """A batch in the ARCHITECTURE.md contract (answers optional)."""
    prompt = ids(tok, prompts)
    answer = ids(tok, answers) if answers is not None else [[] for _ in prompts]
    rows = [p + a for p, a in zip(prompt, answer)]
    labels = [[-100] * len(p) + a for p, a in zip(prompt, answer)]  # loss on the answer only
    q = ids(tok, questions or ["w1"] * len(prompts))
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=pad(rows, tok.pad_token_id, side), attention_mask=pad([[1] * len(r) for r in rows], 0, side),
        labels=pad(labels, -100, side),
        prompt_ids=pad(prompt, tok.pad_token_id, "left"), prompt_mask=pad([[1] * len(r) for r in prompt], 0, "left"),
        question_ids=pad(q, tok.pad_token_id, "right"), question_mask=pad([[1] * len(r) for r in q], 0, "right"),
        pixel_values=torch.randn(len(prompts), 3, 32, 32, generator=g),
    )


PROMPTS = ["<bos> w1 w2 <image> w3", "<bos> <image> w4", "<bos> w5 w6 w7 w8 <image> w9 w10"]
ANSWERS = ["w11 <eos>", "w12 w13 w14 <eos>", "w15 <eos>"]


# --- building the LLM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type,cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_llm_from_config(tok, model_type, cls):
    m = make_vlm(tok, llm=LLMConfig(model_type=model_type, hidden_size=32, num_heads=4, num_kv_heads=2), sharpen=False)
    assert type(m.llm).__name__ == cls
    assert m.llm.config.num_key_value_heads == 2 and m.llm.config.vocab_size == len(tok)
    out = m(batch(tok, PROMPTS, ANSWERS))
    assert out.logits.shape[:2] == (3, 10 + 4 - 1) and torch.isfinite(out.loss)


def test_num_llm_params_tied_and_untied(tok):
    tied = make_vlm(tok, sharpen=False)
    untied = make_vlm(tok, llm=LLMConfig(hidden_size=32, num_layers=2, num_heads=4, tie_word_embeddings=False),
                      sharpen=False)
    emb = len(tok) * 32
    assert tied.num_llm_params(True) - tied.num_llm_params(False) == emb
    assert untied.num_llm_params(True) - untied.num_llm_params(False) == 2 * emb
    assert tied.num_llm_params(False) == untied.num_llm_params(False)


def test_pretrained_llm_loads_by_path_and_resizes(tok, tmp_path):
    m = make_vlm(tok)
    m.llm.save_pretrained(tmp_path)
    b = batch(tok, PROMPTS, ANSWERS)
    spliced = m.splice(b["input_ids"], b["attention_mask"], torch.zeros(3, 4, 32))
    with torch.no_grad():
        ref = m.llm(**{k: v for k, v in spliced.items() if k != "labels"}).logits
    loaded = VLM(VISION, LLMConfig(pretrained=str(tmp_path), hidden_size=999), "avgpool", 4, tok).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.llm(**{k: v for k, v in spliced.items() if k != "labels"}).logits, ref)
    bigger = make_tokenizer(WORDS + ["extra1", "extra2"])
    resized = VLM(VISION, LLMConfig(pretrained=str(tmp_path)), "avgpool", 4, bigger)
    assert resized.llm.get_input_embeddings().num_embeddings == len(bigger) == len(tok) + 2


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(hidden_size=30, num_heads=4), "llm.hidden_size=30 must be divisible by llm.num_heads=4"),
        (dict(num_kv_heads=3), "llm.num_kv_heads=3 must divide llm.num_heads=4"),
        (dict(model_type="not_a_model"), "llm.model_type='not_a_model' cannot be built"),
        (dict(model_type="clip_vision_model"), "cannot be built as a causal LM"),
        (dict(num_layers=0), "llm.num_layers=0"),
        (dict(attn_implementation="foo"), "attn_implementation='foo'"),
    ],
)
def test_bad_llm_config_raises_user_error(tok, kw, match):
    with pytest.raises(UserError, match=match):
        VLM(VISION, LLMConfig(**{**vars(LLM), **kw}), "avgpool", 4, tok)


def test_bad_vision_config_and_tokenizer_raise_user_error(tok):
    with pytest.raises(UserError, match="vision.hidden_size=30"):
        VLM(VisionConfig(hidden_size=30), LLM, "avgpool", 4, tok)
    with pytest.raises(UserError, match="visual_tokens=9 does not fit a 4x4 patch grid"):
        VLM(VISION, LLM, "avgpool", 9, tok)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "w1"])}
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                    pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(UserError, match="tokenizer has no '<image>' token"):
        VLM(VISION, LLM, "avgpool", 4, plain)


# --- splicing and padding -------------------------------------------------------------------------------------


def test_splice_places_visual_tokens_at_the_placeholder(tok):
    m = make_vlm(tok, V=4)
    b = batch(tok, PROMPTS, ANSWERS)
    visual = torch.randn(3, 4, 32)
    s = m.splice(b["input_ids"], b["attention_mask"], visual, b["labels"])
    L = b["input_ids"].shape[1]
    assert s["inputs_embeds"].shape == (3, L + 3, 32) and s["labels"].shape == (3, L + 3)
    text = m.llm.get_input_embeddings()(b["input_ids"])
    for row in range(3):
        p = int((b["input_ids"][row] == m.image_token_id).nonzero())
        torch.testing.assert_close(s["inputs_embeds"][row, p : p + 4], visual[row])
        assert (s["labels"][row, p : p + 4] == -100).all() and s["attention_mask"][row, p : p + 4].eq(1).all()
        torch.testing.assert_close(s["inputs_embeds"][row, :p], text[row, :p])  # text before and after is intact
        torch.testing.assert_close(s["inputs_embeds"][row, p + 4 :], text[row, p + 1 :])
        assert s["labels"][row, p + 4 :].tolist() == b["labels"][row, p + 1 :].tolist()
        n = int(b["attention_mask"][row].sum())
        assert s["position_ids"][row, : n + 3].tolist() == list(range(n + 3))


def test_splice_rejects_rows_without_exactly_one_image(tok):
    m = make_vlm(tok)
    b = batch(tok, ["<bos> <image> w1", "<bos> w1 w2", "<bos> <image> <image>"])
    with pytest.raises(ValueError, match=r"row 1 of input_ids has 0 '<image>' tokens"):
        m.splice(b["input_ids"], b["attention_mask"], torch.zeros(3, 4, 32))


def test_left_and_right_padding_give_the_same_logits(tok):
    m = make_vlm(tok, "tokenpacker")
    right, left = batch(tok, PROMPTS, ANSWERS, side="right"), batch(tok, PROMPTS, ANSWERS, side="left")
    with torch.no_grad():
        lr, ll = m(right).logits, m(left).logits
    n = right["attention_mask"].sum(1) + 3  # real positions after splicing (V - 1 = 3 extra)
    T = lr.shape[1]
    for row in range(3):
        k = int(n[row])
        torch.testing.assert_close(lr[row, :k], ll[row, T - k :], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m(right).loss, m(left).loss, atol=1e-5, rtol=1e-5)


# --- generation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressor", ["avgpool", "quecc"])
def test_generate_cache_matches_no_cache_and_is_batch_invariant(tok, compressor):
    m = make_vlm(tok, compressor)
    b = batch(tok, PROMPTS, questions=["w1 w2", "w3", "w4 w5 w6"])
    cached = m.generate(b, max_new_tokens=6)
    assert cached.shape == (3, 6)
    assert len(set(cached.flatten().tolist())) > 2  # not a degenerate constant
    torch.testing.assert_close(m.generate(b, max_new_tokens=6, use_cache=False), cached)
    for row in range(3):
        one = batch(tok, [PROMPTS[row]], questions=[["w1 w2", "w3", "w4 w5 w6"][row]])
        one["pixel_values"] = b["pixel_values"][row : row + 1]
        assert m.generate(one, max_new_tokens=6).tolist() == cached[row : row + 1].tolist()


def test_generate_pads_after_eos(tok):
    m = make_vlm(tok)
    b = batch(tok, PROMPTS)
    eos_first = torch.zeros(len(tok))
    eos_first[tok.eos_token_id] = 1e4  # make eos the greedy choice at every step
    hook = m.llm.lm_head.register_forward_hook(lambda mod, inp, out: out + eos_first)
    try:
        for cache in (True, False):
            out = m.generate(b, max_new_tokens=4, use_cache=cache)
            assert out[:, 0].eq(tok.eos_token_id).all() and out[:, 1:].eq(tok.pad_token_id).all()
    finally:
        hook.remove()


# --- gradients and conditioning -----------------------------------------------------------------------------


def test_gradients_reach_compressor_and_llm_not_frozen_tower(tok):
    m = make_vlm(tok, "tokenpacker", sharpen=False).train()
    m(batch(tok, PROMPTS, ANSWERS)).loss.backward()
    groups = m.param_groups()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["compressor"])
    assert all(p.grad is not None for p in groups["llm"])
    assert all(p.grad is None and not p.requires_grad for p in groups["vision"])
    assert not m.vision_tower.model.training
    n = sum(len(g) for g in groups.values())
    assert n == len(list(m.parameters()))  # the groups cover every parameter exactly once


def test_gradient_checkpointing_trains(tok):
    llm = LLMConfig(hidden_size=32, num_layers=2, num_heads=4, gradient_checkpointing=True)
    m = make_vlm(tok, "quecc", llm=llm, sharpen=False).train()
    m(batch(tok, PROMPTS, ANSWERS)).loss.backward()
    assert m.llm.model.gradient_checkpointing
    assert m.llm.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_quecc_depends_on_the_question_avgpool_does_not(tok):
    features = torch.randn(2, 2, 16, 32)
    q1, q2 = batch(tok, PROMPTS[:2], questions=["w1 w2", "w3"]), batch(tok, PROMPTS[:2], questions=["w7", "w8 w9 w10"])
    for name, changes in (("quecc", True), ("avgpool", False)):
        m = make_vlm(tok, name)
        a = m.visual_embeds(features, q1["question_ids"], q1["question_mask"])
        b = m.visual_embeds(features, q2["question_ids"], q2["question_mask"])
        assert a.shape == (2, 4, 32)
        assert changes != torch.allclose(a, b), name


def test_question_query_ignores_padding_side(tok):
    m = make_vlm(tok, "quecc")
    q = ids(tok, ["w1 w2 w3", "w4"])
    right = m.question_query(pad(q, 0, "right"), pad([[1] * len(r) for r in q], 0, "right"))
    left = m.question_query(pad(q, 0, "left"), pad([[1] * len(r) for r in q], 0, "left"))
    torch.testing.assert_close(right, left, atol=1e-4, rtol=1e-4)
    assert right.shape == (2, 32) and not right.requires_grad


def test_visual_attention_maps(tok):
    m = make_vlm(tok, "quecc", V=1)
    b = batch(tok, PROMPTS[:2])
    visual, attn = m.visual_embeds(m.encode_images(b["pixel_values"]), b["question_ids"], b["question_mask"],
                                   return_attention=True)
    assert visual.shape == (2, 1, 32) and attn.shape == (2, 1, 16)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 1))
