"""The vectorised sweep path must give the scalar predict()'s numbers, config by config."""
import itertools
import re
from dataclasses import replace

import numpy as np
import pytest

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import list_profiles, load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.predict import predict_many
from simulator.core.workload import Job

# dense GQA, MoE, MLA + MoE, MHA with a plain MLP (gpt2: 12 heads, so tp 8 is refused)
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "deepseek-v3", "gpt2"]
GPUS = ["h100-sxm", "a100-sxm-80gb"]
BATCH = np.array([1, 16, 64])[:, None]
CTX = np.array([0, 511, 1000])[None, :]
SEQ = np.array([1, 128, 1000])[None, :]


def _cases():
    for m, hw, phase, tp, pp in itertools.product(MODELS, GPUS, ("decode", "prefill"), (1, 8), (1, 3)):
        yield m, hw, phase, tp, pp, "gpu", "default"
    for m, hw, phase in itertools.product(("llama-3.1-8b", "mixtral-8x7b"), GPUS, ("decode", "prefill")):
        yield m, hw, phase, 1, 1, "cpu", "default"
    # every other shipped executor profile (host overhead per kernel, unfused attention, ...)
    for ex in sorted(set(list_profiles("executors")) - {"default"}):
        for phase, tp in itertools.product(("decode", "prefill"), (1, 4)):
            yield "llama-3.1-8b", "h100-sxm", phase, tp, 1, "gpu", ex


@pytest.mark.parametrize("m,hw,phase,tp,pp,offload,executor", list(_cases()))
def test_vectorised_equals_scalar(m, hw, phase, tp, pp, offload, executor):
    model, system = load_model(m), load_hardware(hw)
    ex, kp = load_executor_profile(executor), load_kernel_profile(system.gpu.name)
    job = Job(phase=phase, tp=tp, pp=pp, offload_weights=offload)
    sizes = dict(batch=BATCH, context=CTX) if phase == "decode" else dict(batch=BATCH, seq=SEQ)
    try:
        many = predict_many(model, system, job, executor=ex, kernels=kp, **sizes)
    except RoofplanError as e:
        # the structure is invalid: the scalar path must refuse it too, with the same message
        with pytest.raises(RoofplanError, match=re.escape(str(e)[:40])):
            predict(model, system, replace(job, batch=1, seq=1 if phase == "prefill" else 0), ex, kp, check_memory=False)
        return
    n = 0
    for i, b in enumerate(BATCH[:, 0]):
        for j in range(3):
            s = int(SEQ[0, j]) if phase == "prefill" else 0
            c = int(CTX[0, j]) if phase == "decode" else 0
            p = predict(model, system, replace(job, batch=int(b), seq=s, context=c), ex, kp, check_memory=False)
            assert many.time_s[i, j] == pytest.approx(p.time_s, rel=1e-9)
            assert many.tokens_per_s[i, j] == pytest.approx(p.tokens_per_s, rel=1e-9)
            assert many.peak_memory_bytes[i, j] == pytest.approx(p.peak_memory_bytes, rel=1e-9)
            assert many.transfer_time_s[i, j] == pytest.approx(p.transfer_time_s, rel=1e-9, abs=1e-15)
            assert bool(many.fits[i, j]) == p.fits
            assert many.bound[i, j] == p.bound
            n += 1
    assert n == 9


from hypothesis import given, settings, strategies as st  # noqa: E402

# sizes stay within the shortest limit here (olmoe: 4096 positions)
_MODELS = {m: load_model(m) for m in ("llama-3.1-8b", "qwen2.5-7b", "olmoe-1b-7b", "mistral-7b")}
_H100 = load_hardware("h100-sxm")
_EX, _KP = load_executor_profile("default"), load_kernel_profile("h100-sxm")


@settings(max_examples=40, deadline=None)
@given(m=st.sampled_from(sorted(_MODELS)), phase=st.sampled_from(["decode", "prefill"]),
       tp=st.sampled_from([1, 2, 4]), sizes=st.lists(st.tuples(st.integers(1, 512), st.integers(1, 4000)),
                                                    min_size=1, max_size=5))
def test_random_configs_equal_scalar(m, phase, tp, sizes):
    """Scattered (not cartesian) configurations: element i of the arrays is predict() of config i."""
    model = _MODELS[m]
    b = np.array([s[0] for s in sizes])
    n = np.array([s[1] for s in sizes])
    job = Job(phase=phase, tp=tp)
    kw = dict(context=n) if phase == "decode" else dict(seq=n)
    many = predict_many(model, _H100, job, b, executor=_EX, kernels=_KP, **kw)
    for i, (bi, ni) in enumerate(sizes):
        one = replace(job, batch=bi, **({"context": ni} if phase == "decode" else {"seq": ni}))
        p = predict(model, _H100, one, _EX, _KP, check_memory=False)
        assert many.time_s[i] == pytest.approx(p.time_s, rel=1e-9)
        assert many.peak_memory_bytes[i] == pytest.approx(p.peak_memory_bytes, rel=1e-9)
        assert many.bound[i] == p.bound


def test_out_of_range_sizes_are_refused():
    with pytest.raises(RoofplanError, match="out of range"):
        predict_many(load_model("gpt2"), _H100, Job("decode"), np.array([1, 2]), context=np.array([10, 5000]))
    with pytest.raises(RoofplanError, match="prefill and decode"):
        predict_many(load_model("gpt2"), _H100, Job("train", seq=8), np.array([1]), seq=np.array([8]))


def test_progress_bar_on_stderr(capsys):
    from simulator.cli.sweep import Progress
    bar = Progress(total_configs=30, n_shards=2, enabled=True)
    bar.update(10)
    bar.update(20)
    err = capsys.readouterr().err
    assert "1/2 shards, 10/30 configs" in err and "2/2 shards, 30/30 configs" in err and err.endswith("\n")
    assert "[" + "#" * 30 + "]" in err


@pytest.mark.parametrize("m,phase,executor", [
    ("llama-3.1-8b", "decode", "default"), ("llama-3.1-8b", "prefill", "default"),
    ("mixtral-8x7b", "decode", "hf-eager"), ("gpt2", "prefill", "megatron"),
])
def test_large_scattered_sweep_uses_token_dedup_and_equals_scalar(m, phase, executor):
    """Above 4096 configs with repeated token counts, token-only ops are timed once per distinct
    count (simulator.core.step._token_only_ops); attention and other shape-dependent ops are not."""
    from simulator.core.step import _token_only_ops
    from simulator.core.ops import forward_ops
    model, ex = load_model(m), load_executor_profile(executor)
    rng = np.random.default_rng(1)
    n = 6000
    b = rng.choice([1, 2, 4, 8, 16, 32], n)
    s = rng.choice([64, 128, 256, 512, 1000], n)
    job = Job(phase=phase, tp=1)
    kw = dict(context=s) if phase == "decode" else dict(seq=s)
    many = predict_many(model, _H100, job, b, executor=ex, kernels=_KP, **kw)
    vjob = replace(job, batch=b, **({"context": s} if phase == "decode" else {"seq": s}))
    fwd = forward_ops(model, vjob, ex)
    dedup = _token_only_ops(model, vjob, ex, model.n_layers, fwd, (n,))
    assert dedup and not any(fwd[i].cls == "attention" for i in dedup)
    for i in rng.choice(n, 25, replace=False):
        one = replace(job, batch=int(b[i]), **({"context": int(s[i])} if phase == "decode" else {"seq": int(s[i])}))
        p = predict(model, _H100, one, ex, _KP, check_memory=False)
        assert many.time_s[i] == pytest.approx(p.time_s, rel=1e-9)
        assert many.bound[i] == p.bound


@pytest.mark.parametrize("grid, msg", [
    ({"batch": [1.5]}, "field 'batch[0]' must be a valid integer (got 1.5)"),
    ({"batch": []}, "field 'batch' is an empty list, which gives no configurations"),
    ({"phase": "train", "sp": "yes"}, "field 'sp[0]' must be a valid boolean (got 'yes')"),
    ({"batch": 10**21}, "field 'batch[0]' must be <= 16777216"),
    ({"tp": [1, 0]}, "field 'tp[1]' must be >= 1"),
    ({"recompute": "some"}, "field 'recompute[0]' must be 'none', 'selective' or 'full'"),
    ({"batchh": 3}, "unknown field 'batchh' (did you mean: batch"),
])
def test_grid_values_are_exact(grid, msg):
    """A fractional batch used to become 1, an empty list a sweep of nothing, 10**21 a traceback."""
    from simulator.core.errors import RoofplanError
    from simulator.sweep import parse_grid
    with pytest.raises(RoofplanError, match=re.escape(msg)):
        parse_grid({"hardware": "h100-sxm", "model": "gpt2", **grid})


def test_rows_are_counted_without_expanding_the_grid():
    from simulator.sweep import check_grid, count_rows, parse_grid
    grid = {"hardware": ["h100-sxm", "a100-sxm-80gb"], "model": "gpt2", "phase": ["decode", "prefill", "train"],
            "tp": [1, 2], "batch": [1, 2, 3], "seq": [8, 16], "context": [0, 1, 2, 3]}
    assert count_rows(check_grid(grid)) == sum(g.size for g in parse_grid(grid)) == 2 * 2 * 3 * (4 + 2 + 2)
    huge = dict(grid, batch=list(range(1, 100_001)), context=list(range(100_000)))
    assert count_rows(check_grid(huge)) == 2 * 2 * 100_000 * (100_000 + 2 + 2)
