"""Parameter counts against published figures; cache sizes against their formulas; bad configs."""
import json

import re
import pytest
import yaml

from simulator.core.paths import REPO_ROOT
from simulator.core.errors import RoofplanError
from simulator.core.models import list_models, load_model

PUBLISHED = yaml.safe_load((REPO_ROOT / "workloads" / "models" / "published.yaml").read_text())

REQUIRED = ["llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "qwen2.5-7b", "qwen2.5-14b",
            "qwen2.5-32b", "qwen2.5-72b", "mistral-7b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3",
            "olmoe-1b-7b", "opt-6.7b", "opt-30b", "opt-175b", "gpt3-175b"]


def test_zoo_has_required_models():
    assert set(REQUIRED) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_match_published(name):
    m, pub = load_model(name), PUBLISHED[name]
    tol = float(pub["tolerance"])
    assert m.params_total() == pytest.approx(float(pub["params_total"]), rel=tol)
    assert m.params_active() == pytest.approx(float(pub["params_active"]), rel=tol)


@pytest.mark.parametrize("name,exact", [
    ("llama-3.1-8b", 8_030_261_248),      # HF safetensors total
    ("llama-3.2-1b", 1_235_814_400),
    ("mixtral-8x7b", 46_702_792_704),
    ("qwen3-30b-a3b", 30_532_122_624),
    ("gpt2", 124_439_808),
])
def test_params_exact_checkpoint_counts(name, exact):
    assert load_model(name).params_total() == exact


def test_kv_cache_per_token():
    # Llama-3.1-8B: 32 layers x (K + V) x 8 KV heads x 128 dims x 2 B = 128 KiB per token
    assert load_model("llama-3.1-8b").kv_cache_bytes_per_token(2) == 131072
    # Llama-3.1-70B: 80 x 2 x 8 x 128 x 2 B = 320 KiB
    assert load_model("llama-3.1-70b").kv_cache_bytes_per_token(2) == 327680
    # DeepSeek-V3 MLA caches the 512-d latent + 64-d rope key: 61 x 576 x 2 B
    assert load_model("deepseek-v3").kv_cache_bytes_per_token(2) == 61 * 576 * 2


def test_attention_kinds():
    assert load_model("llama-3.1-8b").attention_kind == "gqa"
    assert load_model("opt-6.7b").attention_kind == "mha"
    assert load_model("deepseek-v3").attention_kind == "mla"


def test_load_from_hf_config_path(tmp_path):
    cfg = json.loads((REPO_ROOT / "workloads" / "models" / "llama-3.1-8b.json").read_text())
    d = tmp_path / "my-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    m = load_model(str(d / "config.json"))
    assert m.name == "my-llama" and m.params_total() == 8_030_261_248


def test_errors_are_one_line(tmp_path):
    with pytest.raises(RoofplanError, match="did you mean: llama-3.1-8b"):
        load_model("llama-3.1-8bb")
    bad = tmp_path / "config.json"
    bad.write_text("{ not json")
    with pytest.raises(RoofplanError, match="malformed JSON"):
        load_model(str(bad))
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(RoofplanError, match="field 'num_attention_heads' is missing"):
        load_model(str(bad))
    bad.write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(RoofplanError, match="model_type 'mamba' is not supported"):
        load_model(str(bad))


@pytest.mark.parametrize("change, msg", [
    ({"tie_word_embeddings": "no"}, "field 'tie_word_embeddings' must be a valid boolean (got 'no')"),
    ({"hidden_size": 0}, "field 'hidden_size' must be > 0 (got 0)"),
    ({"vocab_size": 0}, "field 'vocab_size' must be > 0 (got 0)"),
    ({"num_key_value_heads": 0}, "field 'num_key_value_heads' must be > 0 (got 0)"),
    ({"num_attention_heads": 6, "num_key_value_heads": 4}, "must divide the 6 attention heads"),
])
def test_impossible_configs_are_one_line_errors(change, msg, tmp_path):
    """Configs that used to give numbers (a zero width, a string read as true, uneven GQA groups)."""
    import json
    from simulator.core.errors import RoofplanError
    cfg = json.loads((REPO_ROOT / "tests" / "data" / "tiny-llama.json").read_text())
    cfg.update(change)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(cfg))
    with pytest.raises(RoofplanError, match=re.escape(msg)):
        load_model(str(f))


def test_moe_routing_more_experts_than_it_has_is_refused(tmp_path):
    import json
    from simulator.core.errors import RoofplanError
    cfg = json.loads((REPO_ROOT / "workloads" / "models" / "mixtral-8x7b.json").read_text())
    cfg["num_experts_per_tok"] = 9
    f = tmp_path / "moe.json"
    f.write_text(json.dumps(cfg))
    with pytest.raises(RoofplanError, match="1 <= experts per token <= experts"):
        load_model(str(f))
