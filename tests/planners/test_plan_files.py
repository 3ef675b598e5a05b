"""Offload plan files (roofplan.offload-plan/1) are checked field by field when read back by
`validate --plan` and `run --plan`: a hand edit that breaks the plan is one line, exit 2."""
import json

import pytest

from simulator.cli.main import main


@pytest.fixture(scope="module")
def plan_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    from simulator.cli.main import main as run
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["plan", "offload", "--model", "opt-30b", "--hardware", "flexgen-t4", "--phase", "decode",
                    "--format", "json"]) == 0
    path.write_text(out.getvalue())
    return json.loads(out.getvalue())


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["placement"]["weights"].update(cpu=0.9), "field 'placement.weights': gpu \\+ cpu \\+ nvme is 1\\.[0-9]+; the fractions must add up to 1"),
    (lambda d: d["schedule"].pop("block_size"), "field 'schedule.block_size' is missing"),
    (lambda d: d["schedule"].update(gpu_batch_size=0), "field 'schedule.gpu_batch_size' must be > 0 \\(got 0\\)"),
    (lambda d: d["predicted"].update(time_s=-1.0), "field 'predicted.time_s' must be > 0"),
    (lambda d: d.update(phse="decode"), "unknown field 'phse' \\(did you mean: phase"),
    (lambda d: d.update(phase="serve"), "field 'phase' must be 'prefill', 'decode' or 'train'"),
])
def test_a_broken_plan_is_one_line(plan_json, tmp_path, capsys, edit, says):
    d = json.loads(json.dumps(plan_json))
    edit(d)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    assert main(["validate", "--plan", str(p), "--result", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re
    assert re.search(says, err), err


def test_nan_in_a_plan_is_refused(plan_json, tmp_path, capsys):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan_json).replace('"time_s": ', '"time_s": NaN, "x": ', 1))
    assert main(["validate", "--plan", str(p), "--result", str(p)]) == 2
    assert "malformed JSON (NaN is not a number)" in capsys.readouterr().err
