"""CLI: `roofplan plan parallel` and the multi-GPU training flags of `roofplan predict`."""
import json

import pytest

from simulator.cli.main import main
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


TRAIN_CASES = ["train-llama-3.2-1b-b4-s2048-nockpt", "train-llama-3.2-1b-b1-s2048-nockpt",
               "train-llama-3.2-1b-b8-s2048-ckpt"]
# torch.cuda.max_memory_allocated is exact to the allocator's 512-byte blocks, and the model counts
# the same tensors; 1% is room for what a tensor count cannot know, which of a layer's same-sized
# temporaries (33-134 MB each here) is still alive at the peak.
MEMORY_REL = 0.01


def _train_case(end_to_end, case_id):
    case = next(c for c in end_to_end["cases"] if c["id"] == case_id)
    job = Job(phase="train", batch=case["batch"], seq=case["seq"], recompute=case["recompute"])
    return case, job


@pytest.mark.parametrize("case_id", TRAIN_CASES)
def test_single_gpu_training_memory_matches_measurement(end_to_end, case_id):
    # HF transformers eager, fp32 master weights + bf16 autocast + fused AdamW (end_to_end.yaml),
    # predicted with the case's own executor profile
    case, job = _train_case(end_to_end, case_id)
    pred = predict(load_model(case["model"]), load_hardware("h100-sxm"), job, load_executor_profile(case["executor"]))
    assert pred.peak_memory_bytes == pytest.approx(case["peak_memory_bytes"], rel=MEMORY_REL)


@pytest.mark.xfail(strict=True, reason="default executor predicts 45.29 GB against the measured 47.08 GB (-3.8%): "
                                       "it counts 1.6 GB fewer activations than HF eager saves")
def test_single_gpu_training_memory_default_executor(end_to_end):
    case, job = _train_case(end_to_end, TRAIN_CASES[0])
    pred = predict(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), job)
    assert pred.peak_memory_bytes == pytest.approx(case["peak_memory_bytes"], rel=MEMORY_REL)


def test_single_gpu_cli_train_stays_on_the_core_path(capsys):
    code, out, _ = run(capsys, "predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "train",
                       "--batch", "4", "--seq", "2048", "--format", "json")
    d = json.loads(out)
    core = predict(load_model("llama-3.2-1b"), load_hardware("h100-sxm"), Job(phase="train", batch=4, seq=2048))
    assert code == 0 and "time_by_class_s" in d
    assert d["peak_memory_bytes"] == pytest.approx(core.peak_memory_bytes, rel=1e-12)
    assert d["time_s"] == pytest.approx(core.time_s, rel=1e-12)
    assert d["model_flops_per_gpu_s"] > 0 and d["hardware_flops_per_gpu_s"] >= d["model_flops_per_gpu_s"]


def test_predict_parallel_training_json(capsys):
    code, out, _ = run(capsys, "predict", "--model", "llama-3.1-8b", "--hardware", "dgx-h100", "--phase", "train",
                       "--seq", "4096", "--tp", "2", "--dp", "4", "--global-batch", "64", "--micro-batch", "1",
                       "--zero", "1", "--recompute", "selective", "--sp", "--format", "json")
    d = json.loads(out)
    assert code == 0 and (d["tp"], d["dp"], d["n_micro"], d["sp"]) == (2, 4, 16, True)
    # by hand (PaLM appendix B, as MFU counts): per token 6 N + 12 L H Q S, N = 8,030,261,248
    # parameters less the 128256 x 4096 input embedding (the LM head is untied and counts)
    N = 8_030_261_248 - 128256 * 4096
    per_token = 6 * N + 12 * 32 * 32 * 128 * 4096
    assert d["model_flops"] == pytest.approx(per_token * 64 * 4096, rel=1e-3)    # norms' params are not GEMMs
    # MFU against the H100 SXM's dense bf16 peak, 989.4 TFLOP/s (Hopper whitepaper), on 8 GPUs
    assert d["mfu"] == pytest.approx(d["model_flops"] / (d["time_s"] * 8 * 989.4e12), rel=1e-9)
    assert 0.2 < d["mfu"] < 0.7
    assert d["hardware_flops_per_gpu_s"] > d["model_flops_per_gpu_s"]    # selective recompute
    assert d["time_terms_s"]["tp_comm"] > 0 and d["time_terms_s"]["bubble"] == 0


def test_plan_parallel_gpt3_on_1024_a100(capsys):
    code, out, _ = run(capsys, "plan", "parallel", "--model", "gpt3-175b", "--hardware", "dgx-a100", "--gpus", "1024",
                       "--global-batch", "1536", "--seq", "2048", "--zero", "0,1", "--top", "5", "--format", "json")
    d = json.loads(out)
    assert code == 0 and len(d["plans"]) == 5
    best = d["plans"][0]
    assert best["tp"] * best["pp"] * best["dp"] == 1024 and best["why"] == "best"
    assert best["memory_bytes"] <= 80 * 2**30
    times = [p["time_s"] for p in d["plans"]]
    assert times == sorted(times)
    # at least as fast as the Megatron-style t8 p8 d16 configuration under the same model
    from simulator.core.parallel import ParallelPlan, train_step
    from simulator.core.profiles import load_executor_profile
    ref = train_step(load_model("gpt3-175b"), load_hardware("dgx-a100"),
                     ParallelPlan(tp=8, pp=8, dp=16, global_batch=1536, recompute="full"), 2048,
                     load_executor_profile("megatron"))
    assert best["time_s"] <= ref.time_s


def test_plan_parallel_table_explains_losses(capsys):
    code, out, _ = run(capsys, "plan", "parallel", "--model", "llama-3.1-8b", "--hardware", "dgx-h100", "--gpus", "16",
                       "--global-batch", "64", "--seq", "4096", "--top", "20", "--format", "table")
    assert code == 0 and "why slower" in out and "best" in out
    assert any(k in out for k in ("bubble", "tp_comm", "recompute", "dp_comm"))


def test_plan_parallel_cost_objective_tries_fewer_gpus(capsys):
    code, out, _ = run(capsys, "plan", "parallel", "--model", "llama-3.2-1b", "--hardware", "dgx-h100", "--gpus", "16",
                       "--global-batch", "64", "--seq", "2048", "--objective", "cost", "--format", "json")
    d = json.loads(out)
    assert code == 0 and {p["gpus"] for p in d["plans"]} <= {1, 2, 4, 8, 16}
    costs = [p["gpu_h_per_Mtok"] for p in d["plans"]]
    assert costs == sorted(costs)


@pytest.mark.parametrize("argv,msg", [
    (["plan", "parallel", "--model", "gpt3-175b", "--hardware", "dgx-a100", "--gpus", "8", "--global-batch", "8",
      "--seq", "2048"], "no plan fits"),
    (["plan", "parallel", "--model", "llama-3.2-1b", "--hardware", "dgx-h100", "--gpus", "16", "--global-batch", "8",
      "--seq", "2048", "--zero", "5"], "--zero"),
    (["plan", "parallel", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--gpus", "16", "--global-batch", "16",
      "--seq", "2048"], "no network"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "dgx-h100", "--phase", "train", "--seq", "4096",
      "--tp", "16", "--global-batch", "8"], "exceeds the 8 GPUs"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "dgx-h100", "--phase", "decode", "--context", "16",
      "--sp"], "--sp True: applies to phase train only"),
    (["predict", "--model", "llama-3.1-70b", "--hardware", "dgx-h100", "--phase", "train", "--seq", "4096",
      "--dp", "8", "--batch", "8"], "does not fit"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
    code, out, err = run(capsys, *argv)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
