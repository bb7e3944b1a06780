"""The Hugging Face integration on the CPU: registering minf in transformers' attention registry,
switching a model to it and back, the SDPA path for calls minf does not take (here every call:
the model runs on the CPU), ``generate`` through the patch, and the files of ``dump_qkv``.

They need PyTorch, transformers (5.x) and safetensors; without them they are skipped with the
reason. minf's own kernels on CUDA tensors are tested in ``test_gpu.py``.
"""

import os

import pytest

import minf
import minf.hf

torch = pytest.importorskip("torch", reason="the Hugging Face tests need PyTorch")
transformers = pytest.importorskip("transformers", reason="the Hugging Face tests need transformers")
pytest.importorskip("safetensors.torch", reason="dump_qkv needs safetensors")

SEED = int(os.environ.get("MINF_TEST_SEED", "1"))


@pytest.fixture
def tiny_llama():
    """A randomly initialised two-layer Llama with grouped-query attention, on the CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"seed {SEED} (replay: MINF_TEST_SEED={SEED})")
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 300))
    return model, ids


def test_patch_switches_the_model_and_falls_back_to_sdpa_exactly(tiny_llama):
    model, ids = tiny_llama
    before = model.config._attn_implementation
    with torch.no_grad():
        reference = model(ids).logits
        reference_tokens = model.generate(ids[:, :50], max_new_tokens=5, do_sample=False)
    prefill = minf.hf.patch(model)
    assert model.config._attn_implementation == minf.hf.ATTENTION_NAME
    assert isinstance(prefill, minf.Prefill)
    with torch.no_grad():
        patched = model(ids).logits
        tokens = model.generate(ids[:, :50], max_new_tokens=5, do_sample=False)
    # On the CPU minf takes no call: every layer runs transformers' SDPA, bit for bit.
    assert torch.equal(patched, reference)
    assert torch.equal(tokens, reference_tokens)
    minf.hf.unpatch(model)
    assert model.config._attn_implementation == before
    # Unpatching a model that is not patched leaves its implementation (here eager) alone.
    model.set_attn_implementation("eager")
    minf.hf.unpatch(model)
    assert model.config._attn_implementation == "eager"


def test_dump_qkv_writes_post_rotary_layers_in_minf_format(tiny_llama, tmp_path):
    model, ids = tiny_llama
    before = model.config._attn_implementation
    files = minf.hf.dump_qkv(model, ids, str(tmp_path), layers=[0, 1])
    assert sorted(os.path.basename(f) for f in files) == ["layer_0.safetensors", "layer_1.safetensors"]
    assert model.config._attn_implementation == before
    shapes = {"q": (1, 300, 4, 64), "k": (1, 300, 2, 64), "v": (1, 300, 2, 64)}
    from safetensors import safe_open

    for path in files:
        with safe_open(path, framework="pt") as f:
            assert f.metadata()["layout"] == "bshd"
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        assert {name: tuple(t.shape) for name, t in tensors.items()} == shapes
        assert all(t.dtype == model.dtype for t in tensors.values())
    # Layer 0's keys are the rotary-embedded projections of the embedded tokens.
    layer = model.model.layers[0]
    with torch.no_grad():
        hidden = layer.input_layernorm(model.model.embed_tokens(ids))
        keys = layer.self_attn.k_proj(hidden).view(1, 300, 2, 64).transpose(1, 2)
        positions = torch.arange(300)[None, :]
        cos, sin = model.model.rotary_emb(hidden, positions)
        rotated = keys * cos[:, None] + torch.cat((-keys[..., 32:], keys[..., :32]), dim=-1) * sin[:, None]
    with safe_open(files[0], framework="pt") as f:
        dumped = f.get_tensor("k")
    assert torch.allclose(dumped, rotated.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, error, text",
    [
        (dict(input_ids=[[1, 2, 3]]), TypeError, r"input_ids must be a torch.Tensor of token ids, \[1, seq\], got list"),
        (dict(layers=1), TypeError, r"layers must be an iterable of layer indices \(integers\), got int"),
        (dict(layers=0.7), TypeError, r"layers must be an iterable of layer indices \(integers\), got float"),
        (dict(layers=[0.7]), TypeError, r"layers must hold integers, got float 0.7"),
        (dict(layers=[True]), TypeError, r"layers must hold integers, got True"),
        (dict(layers="01"), TypeError, r"layers must be an iterable of layer indices \(integers\), got str"),
        (dict(layers=[0, 2]), ValueError, r"layers \[2\]: the model has layers 0 to 1"),
    ],
)
def test_dump_qkv_checks_its_arguments(tiny_llama, tmp_path, change, error, text):
    model, ids = tiny_llama
    args = {"input_ids": ids, "layers": None, **change}
    with pytest.raises(error, match=text):
        minf.hf.dump_qkv(model, args["input_ids"], str(tmp_path / "dump"), layers=args["layers"])
    assert not (tmp_path / "dump").exists(), "nothing is written on bad arguments"


def test_dump_qkv_needs_attention_modules(tmp_path):
    """GPT-2's attention has a layer_idx but no o_proj: dump_qkv cannot capture it and says so, as
    patch does, instead of returning no files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=128, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 64, (1, 16))
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no attention modules with a layer_idx"):
        minf.hf.patch(model)
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no attention modules with a layer_idx and an o_proj"):
        minf.hf.dump_qkv(model, ids, str(tmp_path / "dump"))
    assert not (tmp_path / "dump").exists()


def test_dump_qkv_raises_for_a_layer_it_did_not_write(tiny_llama, tmp_path, monkeypatch):
    """A chosen layer whose attention never reached the dump writer (here: layer 1's module is
    not found) raises, naming the layer, rather than returning fewer files; the model's
    implementation is restored all the same."""
    model, ids = tiny_llama
    before = model.config._attn_implementation
    first = model.model.layers[0].self_attn
    monkeypatch.setattr(minf.hf, "_attention_modules", lambda model: [first])
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: layers \[1\] were not written"):
        minf.hf.dump_qkv(model, ids[:, :32], str(tmp_path), layers=[0, 1])
    assert model.config._attn_implementation == before
    assert sorted(os.listdir(tmp_path)) == ["layer_0.safetensors"]


def test_a_chunk_after_a_cached_prefix_keeps_its_causal_mask(tiny_llama, monkeypatch):
    """A second chunk of a prompt with the first chunk in the cache (q_len < kv_len): the patched
    mask function leaves its plain bottom-right causal mask out, and the SDPA path (every call, on
    the CPU) rebuilds it: the chunk's logits equal the unpatched model's bit for bit. A padded
    batch keeps transformers' own mask."""
    from transformers import DynamicCache

    model, ids = tiny_llama

    def chunked_logits(attention_mask=None):
        cache = DynamicCache()
        with torch.no_grad():
            first = {"attention_mask": attention_mask[:, :200]} if attention_mask is not None else {}
            model(ids[:, :200], past_key_values=cache, use_cache=True, **first)
            second = {"attention_mask": attention_mask} if attention_mask is not None else {}
            return model(ids[:, 200:], past_key_values=cache, use_cache=True, **second).logits

    reference = chunked_logits()
    built = []
    bottom_right_causal = minf.hf._bottom_right_causal

    def counted(q_len, kv_len, device):
        built.append((q_len, kv_len))
        return bottom_right_causal(q_len, kv_len, device)

    monkeypatch.setattr(minf.hf, "_bottom_right_causal", counted)
    padded = torch.ones(1, 300, dtype=torch.long)
    padded[:, :7] = 0
    reference_padded = chunked_logits(padded)
    minf.hf.patch(model)
    try:
        assert torch.equal(chunked_logits(), reference)
        # The mask function compared the chunk's mask once; each of the 2 layers rebuilt it for SDPA.
        assert built == [(100, 300)] * 3, built
        built.clear()
        assert torch.equal(chunked_logits(padded), reference_padded)
        assert built == [(100, 300)], "a padded chunk keeps transformers' mask"
        assert not torch.equal(reference, reference_padded), "the padding changed nothing: the test is vacuous"
    finally:
        minf.hf.unpatch(model)


def test_a_chunk_of_a_model_with_sliding_window_layers_keeps_both_masks():
    """A model with full and sliding-window layers builds two masks per forward pass: the window's
    (kept) must not erase the record of the full layers' causal mask (left out), or the full layers
    of a chunk after a cached prefix would attend to the prompt's first keys. Logits and generated
    tokens equal the unpatched model's."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, use_sliding_window=True, sliding_window=8, max_window_layers=1,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    assert set(model.config.layer_types) == {"full_attention", "sliding_attention"}
    ids = torch.randint(0, 256, (1, 40))

    def chunk_logits_and_tokens():
        with torch.no_grad():
            first = model(ids[:, :30], use_cache=True)
            chunk = model(ids[:, 30:], past_key_values=first.past_key_values).logits
            return chunk, model.generate(ids[:, :30], max_new_tokens=10, do_sample=False)

    reference_logits, reference_tokens = chunk_logits_and_tokens()
    minf.hf.patch(model)
    try:
        logits, tokens = chunk_logits_and_tokens()
        assert torch.equal(logits, reference_logits), (logits - reference_logits).abs().max()
        assert torch.equal(tokens, reference_tokens)
    finally:
        minf.hf.unpatch(model)


def test_a_static_cache_prefill_keeps_its_top_left_causal_mask(tiny_llama):
    """A static cache's prefill has fewer queries than cache slots and no mask (SDPA's own top-left
    causal skip): the patched model must not read it as a chunk after a prefix. Its logits and
    greedy tokens equal the unpatched model's bit for bit."""
    from transformers import StaticCache

    model, ids = tiny_llama
    prompt = ids[:, :100]

    def prefill_logits():
        cache = StaticCache(config=model.config, max_cache_len=256)
        with torch.no_grad():
            return model(prompt, past_key_values=cache, use_cache=True).logits

    def greedy():
        with torch.no_grad():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                  cache_implementation="static", pad_token_id=0)

    reference_logits, reference_tokens = prefill_logits(), greedy()
    minf.hf.patch(model)
    try:
        assert torch.equal(prefill_logits(), reference_logits)
        assert torch.equal(greedy(), reference_tokens)
    finally:
        minf.hf.unpatch(model)


def test_the_chunk_mask_is_left_out_only_when_it_is_plain_causal():
    from minf.hf import _bottom_right_causal, _chunk_aware_sdpa_mask

    mask = _bottom_right_causal(3, 5, "cpu")
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    import inspect

    from transformers.masking_utils import sdpa_mask

    parameters = inspect.signature(sdpa_mask).parameters
    if "q_length" not in parameters:
        pytest.skip("this transformers' sdpa_mask takes other arguments (not 5.2x's q_length/q_offset)")
    plain = _chunk_aware_sdpa_mask(batch_size=2, q_length=3, kv_length=5, q_offset=2, device="cpu")
    assert plain is None
    padding = torch.ones(2, 5, dtype=torch.bool)
    padding[1, 0] = False
    kept = _chunk_aware_sdpa_mask(batch_size=2, q_length=3, kv_length=5, q_offset=2, attention_mask=padding,
                                  device="cpu")
    assert kept is not None and kept.shape == (2, 1, 3, 5) and not bool(kept[1, 0, :, 0].any())
