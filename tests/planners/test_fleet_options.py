"""plan fleet chooses among engines, weight formats and P/D roles per GPU type, and checks the
plan with the discrete-event simulation (issue 16, parts 4-5). The documented cases
(docs/serving.md): Llama-3.1-70B in int4 on one H100 instead of bf16 on four; vLLM V1 beside
vLLM V0; speculative decoding moving a tight-TPOT chat service to an L40S; a prefix cache halving a
long-document fleet; the simulation derating a small-GPU fleet the closed forms size too tightly.
Every option's capacity is the serving model's for the same configuration (one cost model), and
bad input is one line with exit code 2."""
import json
from dataclasses import replace

import numpy as np
import pytest

from planners.fleet import (FleetOption, candidate_options, option_prices, plan_fleet, simulate_option,
                            simulated_capacity, solve_fleet)
from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_gpu, system_from_gpu
from simulator.core.workload import Job
from simulator.serving.simulate import (EngineOptions, RequestMix, aggregated, max_rate, max_rate_simulated, simulate,
                                        step_tables)
from simulator.serving.workload import load_serving_workload

PRICE = {g: p for g, (p, _) in option_prices(["h100-sxm", "l40s", "l4", "a10g"]).items()}


def _fleet(res) -> dict[str, int]:
    return {o.label: int(n) for o, n in zip(res.plan.options, res.plan.count) if n}


def _plan(model, workload, rate, slo, gpus, tps, sim_requests=1000, **kw):
    m = load_model(model)
    wl = replace(load_serving_workload(workload), rate_rps=rate)
    cands = candidate_options(m, gpus, tps, **kw)
    return plan_fleet(m, wl, *slo, gpus, candidates=cands, sim_requests=sim_requests)


@pytest.fixture(scope="module")
def llama70b_int4():
    """Llama-3.1-70B chat at 4 req/s, p90 TTFT 2 s / TPOT 60 ms, on H100s at TP 1, 2, 4."""
    return _plan("llama-3.1-70b", "chat", 4, (2.0, 0.060), ["h100-sxm"], (1, 2, 4), weight_dtypes=("bf16", "int4"))


def test_int4_weights_put_70b_on_one_h100_instead_of_four(llama70b_int4):
    res, cands, _ = llama70b_int4
    assert _fleet(res) == {"h100-sxm tp1 aggregated int4": 1}
    assert res.plan.cost_usd_per_h == pytest.approx(PRICE["h100-sxm"], rel=1e-12)
    # bf16 weights (141 GB) need TP 4: four times the price for the same load
    bf16 = [c for c in cands if c[0].weights == ""]
    m, wl = load_model("llama-3.1-70b"), replace(load_serving_workload("chat"), rate_rps=4)
    plain, _, _ = plan_fleet(m, wl, 2.0, 0.060, ["h100-sxm"], candidates=bf16, sim_requests=1000)
    assert _fleet(plain) == {"h100-sxm tp4 aggregated": 1}
    assert plain.plan.cost_usd_per_h == pytest.approx(4 * PRICE["h100-sxm"], rel=1e-12)
    # both pass the simulated check at their planned load
    assert all(r["meets"] for r in res.simulated + plain.simulated) and res.sim_resolves == plain.sim_resolves == 0


def test_an_options_capacity_is_the_serving_models(llama70b_int4):
    """T[b, o] of the int4 option is max_rate of `aggregated` on step_tables built with the same
    EngineOptions, whose decode step is predict()'s with weight_dtype int4."""
    res, cands, tput = llama70b_int4
    m = load_model("llama-3.1-70b")
    j = next(k for k, (o, _) in enumerate(cands) if o.label == "h100-sxm tp1 aggregated int4")
    system = system_from_gpu(load_gpu("h100-sxm"), 1)
    tables = step_tables(m, system, 1, options=EngineOptions(weight_dtype="int4"))
    step = predict(m, system, Job("decode", batch=16, context=2048, weight_dtype="int4"), check_memory=False).time_s
    assert float(cands[j][1].decode_time(16, 2048)) == float(tables.decode_time(16, 2048)) == pytest.approx(step, rel=1e-12)
    wl = load_serving_workload("chat")
    for i, b in enumerate(wl.buckets[:4]):
        mix = RequestMix.of([b.in_tokens], [b.out_tokens])
        want = max_rate(lambda r: aggregated(tables, mix, r), 2.0, 0.060, 90, rel_tol=2e-3)
        assert tput[i, j] == want > 0


def test_fp8_is_only_offered_where_the_gpu_has_fp8_tensor_cores():
    m = load_model("llama-3.2-1b")
    cands = candidate_options(m, ["a10g", "l4"], (1,), roles=("aggregated",), weight_dtypes=("bf16", "fp8"))
    assert [o.label for o, _ in cands] == ["a10g tp1 aggregated", "l4 tp1 aggregated", "l4 tp1 aggregated fp8"]
    # ranks: unquantized first (the preferred at equal cost)
    assert [o.preference for o, _ in cands] == [0, 0, 1]


def test_a_faster_engine_is_chosen_where_it_is_cheaper():
    """vLLM V0 listed first; vLLM V1 (CUDA graphs, chunked prefill under 8192 tokens, fitted to
    ML.ENERGY's H100 ITLs) serves part of the load for less: three H100s ($8.97/h), dearer with V0 alone."""
    engines = {n: load_executor_profile(n) for n in ("vllm-v0", "vllm-v1")}
    both, cands, tput = _plan("llama-3.1-8b", "chat", 64, (1.0, 0.040), ["h100-sxm", "l40s"], (1,), engines=engines)
    v0 = [c for c in cands if c[0].engine == "vllm-v0"]
    m, wl = load_model("llama-3.1-8b"), replace(load_serving_workload("chat"), rate_rps=64)
    alone, _, _ = plan_fleet(m, wl, 1.0, 0.040, ["h100-sxm", "l40s"], candidates=v0, sim_requests=1000)
    assert both.plan.cost_usd_per_h == pytest.approx(3 * PRICE["h100-sxm"], rel=1e-12)
    assert alone.plan.cost_usd_per_h > both.plan.cost_usd_per_h + PRICE["l40s"] - 1e-9
    used = _fleet(both)
    assert sum(used.values()) == 3 and all(k.startswith("h100-sxm tp1 aggregated vllm-v") for k in used)
    assert any(k.endswith("vllm-v1") for k in used)
    assert all(r["meets"] for r in both.simulated)
    # the vllm-v1 option's tables are step_tables with that executor profile (one cost model)
    j = next(k for k, (o, _) in enumerate(cands) if o.label == "h100-sxm tp1 aggregated vllm-v1")
    t = step_tables(m, system_from_gpu(load_gpu("h100-sxm"), 1), 1, executor=engines["vllm-v1"])
    assert np.array_equal(cands[j][1].decode_s, t.decode_s) and cands[j][1].kv_budget_tokens == t.kv_budget_tokens
    mix = RequestMix.of([wl.buckets[0].in_tokens], [wl.buckets[0].out_tokens])
    assert tput[0, j] == max_rate(lambda r: aggregated(t, mix, r), 1.0, 0.040, 90, rel_tol=2e-3)


V1 = {"vllm-v1": load_executor_profile("vllm-v1")}


def test_speculative_decoding_moves_a_tight_tpot_service_to_an_l40s():
    """vLLM V1 serving chat at 4 req/s within a p90 TPOT of 20 ms: one H100 ($2.99/h) plain; with
    an EAGLE-style head proposing 3 tokens at 70% acceptance (E = 2.53 tokens per step) one L40S
    ($1.86/h)."""
    slo, gpus = (1.0, 0.020), ["h100-sxm", "l40s"]
    plain, _, _ = _plan("llama-3.1-8b", "chat", 4, slo, gpus, (1,), engines=V1)
    spec, _, _ = _plan("llama-3.1-8b", "chat", 4, slo, gpus, (1,), engines=V1,
                       options=EngineOptions(spec_tokens=3, spec_acceptance=0.7))
    assert _fleet(plain) == {"h100-sxm tp1 aggregated vllm-v1": 1}
    assert _fleet(spec) == {"l40s tp1 aggregated vllm-v1": 1}
    assert spec.plan.cost_usd_per_h == pytest.approx(PRICE["l40s"], rel=1e-12)
    assert all(r["meets"] for r in spec.simulated)


def test_a_prefix_cache_shrinks_a_long_document_fleet():
    """vLLM V1, long documents (~6400-token prompts) at 4 req/s, p90 TTFT 2 s / TPOT 40 ms: three
    H100s; with half of every prompt cached, two."""
    plain, _, _ = _plan("llama-3.1-8b", "long-document", 4, (2.0, 0.040), ["h100-sxm"], (1,), engines=V1)
    cached, _, _ = _plan("llama-3.1-8b", "long-document", 4, (2.0, 0.040), ["h100-sxm"], (1,), engines=V1,
                         options=EngineOptions(prefix_hit=0.5))
    assert sum(_fleet(plain).values()) == 3 and plain.plan.cost_usd_per_h == pytest.approx(3 * PRICE["h100-sxm"])
    assert _fleet(cached) == {"h100-sxm tp1 aggregated vllm-v1": 2}


@pytest.fixture(scope="module")
def small_gpus_mixed():
    """Llama-3.1-8B, the mixed workload at 2 req/s on L4s and A10Gs, p90 TTFT 4 s / TPOT 100 ms:
    KV caches of ~40k tokens against ~6700-token long documents."""
    m = load_model("llama-3.1-8b")
    wl = replace(load_serving_workload("mixed"), rate_rps=2)
    cands = candidate_options(m, ["l4", "a10g"], (1,))
    run = lambda **kw: plan_fleet(m, wl, 4.0, 0.100, ["l4", "a10g"], candidates=cands, **kw)[0]
    return wl, cands, run(sim_requests=1000), run(sim_requests=1000, sim_admission=False), run()


def test_the_simulation_derates_what_the_closed_forms_oversize(small_gpus_mixed):
    _, _, admitted, reported, closed = small_gpus_mixed
    # without admission the closed-form fleet stands (five L4s and an A10G), and the simulation
    # says where it fails: a decode instance near its KV limit queues requests it cannot admit
    assert _fleet(reported) == _fleet(closed)
    assert closed.plan.cost_usd_per_h == pytest.approx(5 * PRICE["l4"] + PRICE["a10g"], rel=1e-12)
    misses = [r for r in reported.simulated if not r["meets"]]
    assert misses and all(r["meets"] for r in reported.predicted)      # the closed forms pass them all
    assert reported.sim_attainment < 0.9 and reported.slo_attainment == 1.0
    assert any(r["role"] == "decode" and r["tpot_p90_ms"] > 10 * 100 for r in misses)
    # with admission: re-solved until every option meets its SLOs in the simulation, 7% dearer
    assert all(r["meets"] for r in admitted.simulated) and admitted.sim_resolves >= 1
    assert admitted.unchecked_cost_usd_per_h == pytest.approx(closed.plan.cost_usd_per_h, rel=1e-12)
    assert admitted.plan.cost_usd_per_h == pytest.approx(4 * PRICE["l4"] + 2 * PRICE["a10g"], rel=1e-12)
    assert admitted.notes[0].startswith("simulation: ") and "simulated, " in admitted.notes[0]
    assert "closed form, SLO 100 ms) at " in admitted.notes[0] and "re-solved with it derated" in admitted.notes[0]
    assert closed.simulated == [] and closed.notes == ()


def test_the_check_is_the_serving_simulation(small_gpus_mixed):
    """Each row of the check is `simulate_option` at the mix and per-instance rate the plan gives
    that option; an aggregated instance's is serving.simulate at its token budget, and its
    simulated capacity is serving.max_rate_simulated."""
    wl, cands, _, reported, _ = small_gpus_mixed
    for row in reported.simulated:
        tables = cands[row["index"]][1]
        lam = np.maximum(reported.plan.share[:, row["index"]], 0) * reported.plan.bucket_rates_rps
        mix = RequestMix.of([b.in_tokens for b in wl.buckets], [b.out_tokens for b in wl.buckets], lam + 1e-300)
        assert row["rate_rps"] == pytest.approx(lam.sum() / row["instances"], rel=1e-12)
        sim = simulate_option(row["role"], tables, mix, row["rate_rps"], 1000)
        name = "tpot_s" if row["role"] == "decode" else "ttft_s"
        assert row[f"{name[:4]}_p90_ms"] == pytest.approx(sim.percentile(name, 90) * 1e3, rel=1e-12)
    opt, tables = next(c for c in cands if c[0].label == "a10g tp1 aggregated")
    mix = wl.mix()
    agg, ref = simulate_option("aggregated", tables, mix, 1.0, 1000), simulate(tables, mix, 1.0, 1000, seed=0, chunk_tokens=512)
    assert np.array_equal(agg.ttft_s, ref.ttft_s) and np.array_equal(agg.tpot_s, ref.tpot_s, equal_nan=True)
    assert simulated_capacity("aggregated", tables, mix, 4.0, 0.100, 90, hi=8.0, n_requests=300) == \
        max_rate_simulated(tables, mix, 4.0, 0.100, 90, n_requests=300, hi=8.0, rel_tol=0.02)
    # a decode pool's requests arrive prefilled: TTFT ~0, TPOT from the decode instance alone
    dec = simulate_option("decode", tables, mix, 0.5, 200)
    assert np.nanmax(dec.ttft_s) < 1e-9 and np.all(np.isfinite(dec.tpot_s[dec.out_tokens > 1]))


def test_prefill_and_decode_of_a_request_share_engine_and_weights():
    """The cheapest prefill pool is of group A and the cheapest decode pool of group B: a request
    cannot be split across them (its KV cache is one engine's, from one model)."""
    opts = [FleetOption("g", 1, "prefill", 1.0, engine="a"), FleetOption("g", 1, "decode", 3.0, engine="a"),
            FleetOption("g", 1, "prefill", 3.0, engine="b"), FleetOption("g", 1, "decode", 1.0, engine="b")]
    tput = np.array([[1.0, 1.0, 1.0, 1.0]])
    plan = solve_fleet(opts, tput, np.array([1.0]))
    assert plan.cost_usd_per_h == pytest.approx(4.0)          # not a's prefill + b's decode ($2)
    assert plan.share[0, 0] == pytest.approx(plan.share[0, 1]) and plan.share[0, 2] == pytest.approx(plan.share[0, 3])
    # equal cost either way: the first engine (preference 0) is kept
    opts = [replace(o, preference=0 if o.engine == "a" else 1) for o in opts]
    plan = solve_fleet(opts, tput, np.array([1.0]))
    assert list(plan.count) == [1, 1, 0, 0]


BASE = ["plan", "fleet", "--model", "llama-3.2-1b", "--workload", "chat", "--slo-ttft-ms", "500", "--slo-tpot-ms", "20",
        "--gpus", "l4,a10g", "--tp", "1", "--rate", "20"]


def test_cli_shows_engine_and_weights_skips_and_quality(capsys):
    assert main([*BASE, "--weight-dtypes", "bf16,fp8,int4", "--engines", "default,vllm-v1", "--format", "table"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[1].split()
    assert head[:5] == ["gpu", "tp", "role", "engine", "weights"]
    assert "weights fp8 skipped on a10g: no fp8 tensor cores (W8A8 needs them)" in out
    assert "simulated check: 1000 seeded Poisson requests per option" in out
    assert main([*BASE, "--weight-dtypes", "bf16,fp8,int4", "--engines", "default,vllm-v1", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["skipped_weights"] == {"a10g": {"fp8": "no fp8 tensor cores (W8A8 needs them)"}}
    assert all(a["engine"] in ("default", "vllm-v1") and a["simulated"]["requests"] == 1000 for a in d["allocation"])
    assert d["cost_usd_per_h"] == pytest.approx(sum(a["usd_per_h"] for a in d["allocation"]), rel=1e-12)
    assert main([*BASE, "--weight-dtypes", "int4", "--format", "table", "--check-sim", "0"]) == 0
    out = capsys.readouterr().out
    assert ("note: this plan serves int4 weights, which change the model's outputs; the planner does not judge "
            "quality (you opted in by listing them)") in out and "simulated check" not in out


def test_cli_energy_objective_and_front_with_options(capsys, tmp_path):
    png = tmp_path / "front.png"
    assert main([*BASE, "--weight-dtypes", "bf16,int4", "--objective", "energy", "--energy-front", "--plot", str(png),
                 "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["objective"] == "energy" and png.stat().st_size > 0 and d["energy_front"]
    assert sum(a["power_w"] for a in d["allocation"]) == pytest.approx(d["power_w"], rel=1e-12)


@pytest.mark.parametrize("extra, msg", [
    (["--engines", "vllm-v9"], "unknown executor profile 'vllm-v9' (did you mean: vllm-v1, vllm-v0?)"),
    (["--gpus", "a10g", "--weight-dtypes", "fp8"],
     "--weight-dtypes fp8: a10g has no fp8 tensor cores (W8A8 needs them); add int8 or int4 (weight-only) or bf16"),
    (["--weight-dtypes", "int3"], "--weight-dtypes int3: unknown; use bf16, fp16, fp8, int8, int4"),
    (["--spec-tokens", "3", "--spec-acceptance", "0"], "--spec-acceptance 0.0: must be a per-token acceptance rate in (0, 1]"),
    (["--spec-tokens", "3", "--spec-acceptance", "1.5"], "--spec-acceptance 1.5: must be a per-token acceptance rate in (0, 1]"),
    (["--spec-acceptance", "0.7"], "--spec-acceptance needs --spec-tokens K"),
    (["--prefix-hit", "1"], "--prefix-hit 1.0: must be a share of the prompt in [0, 1)"),
    (["--kv-dtype", "fp9"], "--kv-dtype fp9: unknown"),
    (["--executor", "vllm-v0", "--engines", "vllm-v1"], "--executor and --engines both name engines"),
    (["--check-sim", "-1"], "--check-sim -1: must be >= 0"),
    (["--spec-tokens", "3", "--spec-acceptance", "0.7", "--draft-model", "llama-3.1-70b"],
     "--draft-model llama-3.1-70b: has 70.6B parameters, not fewer than llama-3.2-1b's"),
])
def test_cli_bad_option_input_is_one_line(capsys, extra, msg):
    rc = main([*BASE, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and msg in err, err
