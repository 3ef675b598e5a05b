"""Hardware specs: every file valid and sourced; bad files give one-line errors naming file and field."""
import shutil

import pytest

from simulator.core.paths import REPO_ROOT
from simulator.core import specs
from simulator.core.errors import RoofplanError

GPUS = ["h100-sxm", "h100-pcie", "h200", "b200", "a100-sxm-80gb", "a100-sxm-40gb", "a100-pcie-80gb", "l40s",
        "l4", "a10g", "t4", "rtx-4090", "rtx-3090", "v100-sxm-32gb", "mi300x"]


def test_all_specs_valid():
    names = specs.validate_all()
    assert set(GPUS) <= set(names["gpu"])
    assert {"pcie-gen3-x16", "pcie-gen4-x16", "pcie-gen5-x16", "nvlink-3", "nvlink-4", "infiniband-ndr"} <= set(names["link"])
    assert {"dgx-h100", "dgx-a100"} <= set(names["system"])
    assert names["cpu"] and names["nvme"]


def test_h100_datasheet_numbers():
    g = specs.load_gpu("h100-sxm")
    assert g.peak_flops("bf16") == pytest.approx(989.4e12, rel=0.01)   # dense, not the 1979 sparse figure
    assert g.hbm_bw_Bps == pytest.approx(3.35e12, rel=0.01)
    assert g.mem_bytes == 80 * 2**30


def test_dense_not_sparse_peaks():
    # no GPU lists a dense bf16 peak above its fp8 peak, nor fp8 above 2x bf16
    for name in GPUS:
        g = specs.load_gpu(name)
        p = g.peak_flops_by_dtype
        if "bf16" in p and "fp8" in p:
            assert p["fp8"] <= 2.01 * p["bf16"], name


def test_unknown_gpu_suggests():
    with pytest.raises(RoofplanError, match="did you mean: h100-sxm"):
        specs.load_hardware("h100-smx")


def test_bare_gpu_and_count_syntax():
    s = specs.load_hardware("8xh100-sxm")
    assert s.gpu_count == 8 and s.peer_link.name == "nvlink-4"


@pytest.fixture
def hw_copy(tmp_path, monkeypatch):
    dst = tmp_path / "hardware_specs"
    shutil.copytree(REPO_ROOT / "hardware_specs", dst)
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(dst))
    return dst


def test_malformed_yaml(hw_copy):
    (hw_copy / "gpus" / "h100-sxm.yaml").write_text("name: h100-sxm\nkind: [gpu\n")
    with pytest.raises(RoofplanError, match=r"h100-sxm.yaml: line \d+ malformed YAML"):
        specs.load_gpu("h100-sxm")


def test_missing_field(hw_copy):
    p = hw_copy / "gpus" / "h100-sxm.yaml"
    p.write_text("\n".join(l for l in p.read_text().splitlines() if not l.startswith("memory_GiB")))
    with pytest.raises(RoofplanError, match="field 'memory_GiB' is missing"):
        specs.load_gpu("h100-sxm")


def test_missing_source(hw_copy):
    p = hw_copy / "links" / "nvlink-4.yaml"
    p.write_text("\n".join(l for l in p.read_text().splitlines() if not l.startswith("source")))
    with pytest.raises(RoofplanError, match="field 'source' is missing"):
        specs.load_link("nvlink-4")


def test_bad_value(hw_copy):
    p = hw_copy / "gpus" / "h100-sxm.yaml"
    p.write_text(p.read_text().replace("sm_count: 132", "sm_count: many"))
    with pytest.raises(RoofplanError, match="field 'sm_count' must be a valid integer"):
        specs.load_gpu("h100-sxm")


def test_optional_system_fields_may_be_omitted(hw_copy):
    (hw_copy / "systems" / "tiny-box.yaml").write_text(
        "name: tiny-box\nkind: system\ndescription: one L4\ngpu: l4\ngpu_count: 1\nhost_link: pcie-gen4-x16\nsource: test\n")
    s = specs.load_system("tiny-box")
    assert s.gpu_link is None and s.peer_link.name == "pcie-gen4-x16" and s.host_mem_bytes is None


def test_a_key_given_twice_is_refused(tmp_path):
    """YAML keeps the last of two equal keys silently (an 80 GiB GPU becoming 8 GiB): refused."""
    from simulator.core.errors import RoofplanError
    from simulator.core.specs import read_yaml
    f = tmp_path / "gpu.yaml"
    f.write_text("name: g\nmemory_GiB: 80\nmemory_GiB: 8\n")
    with pytest.raises(RoofplanError, match=r"line 3 malformed YAML \(key 'memory_GiB' given twice\)"):
        read_yaml(f)


def test_files_that_are_not_utf8_are_one_line(tmp_path):
    from simulator.core.errors import RoofplanError
    from simulator.core.models import load_model
    from simulator.core.specs import read_yaml
    bad = b"\xff\xfe\x00 not text"
    (tmp_path / "s.yaml").write_bytes(bad)
    (tmp_path / "m.json").write_bytes(bad)
    with pytest.raises(RoofplanError, match="not UTF-8 text"):
        read_yaml(tmp_path / "s.yaml")
    with pytest.raises(RoofplanError, match="not UTF-8 text"):
        load_model(str(tmp_path / "m.json"))


def test_an_unknown_field_is_refused_with_a_suggestion(hw_copy):
    """Renaming attention_GBps to attention_GBs silently changed an offload plan; now it is an error."""
    p = hw_copy / "cpus" / "xeon-vm-16vcpu.yaml"
    text = p.read_text()
    if "attention_GBps" not in text:
        text += "attention_GBps: 10\n"
    p.write_text(text.replace("attention_GBps", "attention_GBs"))
    with pytest.raises(RoofplanError, match=r"unknown field 'attention_GBs' \(did you mean: attention_GBps"):
        specs.load_cpu("xeon-vm-16vcpu")


@pytest.mark.parametrize("value", ["0", ".nan", ".inf", "-1"])
def test_a_bandwidth_must_be_positive_and_finite(hw_copy, value):
    p = hw_copy / "links" / "nvlink-4.yaml"
    p.write_text("\n".join(f"bandwidth_GBps: {value}" if l.startswith("bandwidth_GBps") else l
                           for l in p.read_text().splitlines()))
    with pytest.raises(RoofplanError, match="field 'bandwidth_GBps' must be (> 0|a finite number)"):
        specs.load_link("nvlink-4")


@pytest.mark.parametrize("line", ["workspace_MiB: lots", "norm_kernels: -8", "fused_qkv: maybe", "host_per_layer_us: .nan"])
def test_executor_profile_values_are_checked(hw_copy, line):
    """Values that tracebacked or silently made a step faster are one-line errors, and hw check
    reads the profiles too."""
    from simulator.cli.main import main
    p = hw_copy / "profiles" / "executors" / "hf-eager.yaml"
    key = line.split(":")[0]
    p.write_text("\n".join(l for l in p.read_text().splitlines() if not l.startswith(key + ":")) + f"\n{line}\n")
    with pytest.raises(RoofplanError, match=f"field '{key}' must be .* \\(got"):
        from simulator.core.profiles import load_executor_profile
        load_executor_profile("hf-eager")
    assert main(["hw", "check"]) == 2


def test_printed_sizes_stay_readable():
    from simulator.core.units import fmt_bytes, fmt_time
    assert fmt_bytes(17.5 * 2**30) == "17.5 GiB" and fmt_bytes(7.348e23 * 2**40) == "7.35e+23 TiB"
    assert fmt_bytes(float("nan")) == "nan B" and fmt_time(float("inf")) == "inf s" and fmt_time(0.00802) == "8.02 ms"


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, says", [
    # knots that do not increase were used silently (np.interp assumes sorted x)
    ("      - 1.0e-05\n      - 0.0001\n", "      - 0.0001\n      - 1.0e-05\n", "'knots_s' must increase"),
    ("efficiency:\n      - 0.8407", "efficiency:\n      - 1.8407", r"field 'gemm.bf16.compute.efficiency\[0\]' must be <= 1 \(got 1.8407\)"),
    ("    overhead_us: 6.257", "    overhead_us: -6.257", "field 'gemm.bf16.overhead_us' must be >= 0"),
    ("  latency_us: 9.567", "  latency_us: .inf", "field 'copy.latency_us' must be a finite number"),
    ("  eager_slowdown: 1.244", "  eager_slowdwn: 1.244", "unknown field 'elementwise.eager_slowdwn' \\(did you mean: eager_slowdown"),
    ("  bf16:\n    overhead_us", "  bf61:\n    overhead_us", "field 'gemm': has bf61, fp16, fp32, fp8, tf32 curves but needs bf16"),
])
def test_kernel_profile_is_checked_field_by_field(hw_copy, old, new, says):
    """Each physical range of a kernel profile is enforced with the field's dotted path; `hw check`
    refuses the profile too (exit 2)."""
    from simulator.cli.main import main
    from simulator.core.profiles import load_kernel_profile
    _edit(hw_copy / "profiles" / "kernels" / "h100-sxm.yaml", old, new)
    with pytest.raises(RoofplanError, match=says):
        load_kernel_profile("h100-sxm")
    assert main(["hw", "check"]) == 2


def test_an_op_class_typo_in_an_executor_profile_is_refused(hw_copy):
    from simulator.core.profiles import load_executor_profile
    _edit(hw_copy / "profiles" / "executors" / "hf-eager.yaml", "host_per_op_us: {gemm:", "host_per_op_us: {gemn:")
    with pytest.raises(RoofplanError, match=r"'host_per_op_us': names op class 'gemn' \(did you mean: gemm"):
        load_executor_profile("hf-eager")


@pytest.mark.parametrize("old, new, says", [
    ("type: nvlink", "type: nvlnk", "field 'type' must be 'pcie', 'nvlink'"),
    ("latency_us:", "sources: {latency_ms: guess}\nlatency_us:", "'sources' names 'latency_ms', which is not a field"),
    ("name: nvlink-4", "- name: nvlink-4", "malformed YAML|expected a YAML mapping"),
])
def test_link_type_and_per_field_sources_are_checked(hw_copy, old, new, says):
    _edit(hw_copy / "links" / "nvlink-4.yaml", old, new)
    with pytest.raises(RoofplanError, match=says):
        specs.load_link("nvlink-4")


def test_an_alias_bomb_is_one_short_line(hw_copy):
    """Nine levels of nine aliases expand to 9^9 values: refused before construction, in one line."""
    levels = ["a0: &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    p = hw_copy / "links" / "nvlink-4.yaml"
    p.write_text(p.read_text() + "\n".join(levels) + "\n")
    with pytest.raises(RoofplanError) as e:
        specs.load_link("nvlink-4")
    assert "alias" in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


def test_accelerate_builds_on_hf_eager():
    """accelerate.yaml names `base: hf-eager`: every field a refit of hf-eager changes (host costs,
    in-stream kernels) is accelerate's too; its own fields win."""
    from simulator.core.profiles import load_executor_profile
    hf, acc = load_executor_profile("hf-eager"), load_executor_profile("accelerate")
    for f in ("host_overhead_per_kernel_s", "host_per_op_s", "kernel_overhead_s", "gemm_overhead_s",
              "gemm_memory_efficiency", "attn_decode_overhead_s", "memory_efficiency_scale", "stream_gap_s",
              "gemm_efficiency_scale", "fused_families", "kv_cache_concat"):
        assert getattr(acc, f) == getattr(hf, f), f
    assert acc.host_per_layer_s == pytest.approx(913.5e-6) and acc.host_per_layer_s != hf.host_per_layer_s
    assert acc.offload_embeddings and not hf.offload_embeddings
    assert (acc.fitted_on, hf.fitted_on) == ("h100-sxm", "h100-sxm")   # accelerate's copy efficiency: its H100 case
    assert hf.copy_efficiency_scale == 1.0 and acc.copy_efficiency_scale < 1.0
    assert acc.description != hf.description and acc.source.startswith("base: hf-eager")


@pytest.mark.parametrize("old, new, says", [
    ("base: hf-eager", "base: hf-eagre", r"field 'base' is 'hf-eagre', not an executor profile \(did you mean: hf-eager"),
    ("base: hf-eager", "base: accelerate", r"field 'base' makes a cycle \(accelerate -> accelerate\)"),
])
def test_a_bad_base_is_one_line(hw_copy, old, new, says):
    from simulator.core.profiles import load_executor_profile
    _edit(hw_copy / "profiles" / "executors" / "accelerate.yaml", old, new)
    with pytest.raises(RoofplanError, match=says):
        load_executor_profile("accelerate")


def test_a_base_cycle_through_two_profiles_is_refused(hw_copy):
    from simulator.core.profiles import load_executor_profile
    p = hw_copy / "profiles" / "executors" / "hf-eager.yaml"
    p.write_text("base: accelerate\n" + p.read_text())
    with pytest.raises(RoofplanError, match=r"hf-eager.yaml: field 'base' makes a cycle \(accelerate -> hf-eager -> accelerate\)"):
        load_executor_profile("accelerate")


@pytest.mark.parametrize("line, says", [
    ("kernel_overhead_us: {norn: 2.0}", r"field 'kernel_overhead_us': names op class 'norn' \(did you mean: norm"),
    ("kernel_overhead_us: -1", r"field 'kernel_overhead_us' must be >= 0 \(got -1\)"),
    ("memory_efficiency_scale: {norm: 0}", r"field 'memory_efficiency_scale.norm' must be > 0 \(got 0\)"),
    ("gemm_memory_efficiency: 1.5", r"field 'gemm_memory_efficiency' must be <= 1 \(got 1.5\)"),
    ("attn_decode_overhead_us: fast", r"field 'attn_decode_overhead_us' must be a valid number"),
])
def test_in_stream_kernel_fields_are_checked(tmp_path, line, says):
    from simulator.core.profiles import load_executor_profile
    p = tmp_path / "mine.yaml"
    p.write_text(f"description: x\nsource: y\nbase: hf-eager\n{line}\n")
    with pytest.raises(RoofplanError, match=f"mine.yaml: {says}"):
        load_executor_profile(str(p))


def test_a_profile_of_the_same_name_elsewhere_can_build_on_the_shipped_one(tmp_path):
    """Not a cycle: ./hf-eager.yaml with `base: hf-eager` extends the shipped hf-eager."""
    from simulator.core.profiles import load_executor_profile
    p = tmp_path / "hf-eager.yaml"
    p.write_text("description: x\nsource: y\nbase: hf-eager\nhost_per_layer_us: 500\n")
    mine, shipped = load_executor_profile(str(p)), load_executor_profile("hf-eager")
    assert mine.host_per_layer_s == pytest.approx(500e-6) and mine.gemm_overhead_s == shipped.gemm_overhead_s
