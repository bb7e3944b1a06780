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
