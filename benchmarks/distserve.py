"""DistServe's motivating case (Zhong et al., OSDI 2024, arXiv:2401.09670, section 2 / Figure 1):
a 13B model on one A100-80GB, input 512 / output 64 tokens, P90 TTFT <= 0.4 s and P90 TPOT <= 0.04 s.
Per-GPU goodput quoted in the paper's section 2 text: colocated (vLLM) 1.6 req/s; prefill-only
5.6; decode-only 10; disaggregated 2 prefill + 1 decode GPUs = 10 req/s on 3 GPUs = 3.3 per GPU
(UNVERIFIED: quoted from memory of the paper, not re-checked against the PDF; the step-time
comparison below uses DistServe's published profile file and is exact).
Prints the serving model's figures for OPT-13B on a100-sxm-80gb beside them."""
from simulator import serving as sv
from simulator.models import load_model
from simulator.specs import load_hardware

PUBLISHED = {"colocated": 1.6, "prefill-only": 5.6, "decode-only": 10.0, "disaggregated 2P+1D per GPU": 3.3}


def main() -> dict:
    t = sv.step_tables(load_model("opt-13b"), load_hardware("a100-sxm-80gb"), tp=1)
    mix = sv.RequestMix.of([512], [64])
    ttft, tpot = 0.4, 0.04
    ours = {
        "colocated": sv.max_rate(lambda r: sv.aggregated(t, mix, r), ttft, tpot),
        "prefill-only": sv.max_rate(lambda r: sv.prefill_pool(t, mix, r), ttft, float("inf")),
        "decode-only": sv.max_rate(lambda r: sv.decode_pool(t, mix, r), float("inf"), tpot),
    }
    ours["disaggregated 2P+1D per GPU"] = min(2 * ours["prefill-only"], ours["decode-only"]) / 3
    # DistServe's own A100 profile of OPT-13B, TP 1 (simdistserve/estimators/profile_data/
    # profiler-a100-80g.distserve.json): prefill a + b n + c n^2; decode a + b sum(ctx) + c batch (ms)
    pa, pb, pc = 16.456860431694288, 0.09264750660897617, 6.474785740229194e-06
    da, db, dc = 19.934702624895458, 0.0006269356524350583, 0.03850697740828398
    print("step times vs DistServe's A100 profile (ms):")
    for n in (128, 512, 2048):
        print(f"  prefill {n:5d} tokens: model {float(t.prefill_time(n)) * 1e3:6.1f}  DistServe {pa + pb * n + pc * n * n:6.1f}")
    for b, c in ((1, 576), (26, 576), (64, 1024)):
        print(f"  decode batch {b:3d} ctx {c:5d}: model {float(t.decode_time(b, c)) * 1e3:6.1f}  DistServe {da + db * b * c + dc * b:6.1f}")
    print(f"{'goodput (req/s per GPU)':32s} {'model':>8s} {'published':>10s} {'ratio':>7s}")
    for k, v in ours.items():
        pub = PUBLISHED.get(k)
        print(f"{k:32s} {v:8.2f} {pub if pub else '-':>10} {(v / pub if pub else float('nan')):7.2f}")
    return ours


if __name__ == "__main__":
    main()
