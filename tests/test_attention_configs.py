"""The attention launch-config table's overrides (``configs.load_overrides``, ``ODYSSEUS_ATTENTION_CONFIGS``)
and the sweep's choice of configs (``benchmarks/attention_tune.py``: fastest correct candidate, written
in the file the loader reads)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from odysseus_kernels.kernels.attention import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import attention_tune  # noqa: E402


@pytest.fixture
def table():
    saved = dict(configs.TABLE)
    yield configs.TABLE
    configs.TABLE.clear()
    configs.TABLE.update(saved)


def _write(tmp_path, entries):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"attention_configs": entries}))
    return str(path)


def test_overrides_replace_only_their_entries(tmp_path, table):
    before = dict(table)
    path = _write(tmp_path, [{"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [128, 64, 8, 3]}])
    assert configs.load_overrides(path) == {(90, "fwd", "16", 128): configs.LaunchConfig(128, 64, 8, 3)}
    assert configs.pick(90, "fwd", torch.bfloat16, 100) == configs.LaunchConfig(128, 64, 8, 3)
    assert configs.pick(80, "fwd", torch.bfloat16, 128) == before[(80, "fwd", "16", 128)]
    assert {k: v for k, v in table.items() if k != (90, "fwd", "16", 128)} == \
        {k: v for k, v in before.items() if k != (90, "fwd", "16", 128)}


@pytest.mark.parametrize("bad", [
    {"arch": 75, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [64, 64, 4, 2]},
    {"arch": 90, "kernel": "bwd", "dtype": "16", "head_dim": 128, "cfg": [64, 64, 4, 2]},
    {"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 96, "cfg": [64, 64, 4, 2]},
    {"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [96, 64, 4, 2]},
    {"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [64, 64, 4]},
    {"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [64, 64, 4, 0]},
    {"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128},
])
def test_a_bad_file_raises_and_changes_nothing(tmp_path, table, bad):
    before = dict(table)
    good = {"arch": 90, "kernel": "bwd_dq", "dtype": "16", "head_dim": 64, "cfg": [64, 64, 4, 2]}
    with pytest.raises(ValueError, match="bad entry"):
        configs.load_overrides(_write(tmp_path, [good, bad]))
    assert table == before
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="attention_configs"):
        configs.load_overrides(str(tmp_path / "x.json"))


def test_the_environment_variable_loads_a_file_at_import(tmp_path):
    path = _write(tmp_path, [{"arch": 90, "kernel": "bwd_dkdv", "dtype": "16", "head_dim": 128, "cfg": [32, 128, 4, 3]}])
    code = ("import torch; from odysseus_kernels.kernels.attention import configs; "
            "print(configs.pick(90, 'bwd_dkdv', torch.float16, 128))")
    env = {**os.environ, configs.OVERRIDES_ENV: path}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "block_m=32, block_n=128, num_warps=4, num_stages=3" in out.stdout


def _row(kernel, cfg, causal, ms, status="ok", table=False):
    return {"kernel": kernel, "head_dim": 128, "causal": causal, "cfg": cfg, "table": table, "ms": ms, "status": status,
            "arch": 90, "dtype": "16"}


def test_the_sweep_picks_the_fastest_correct_candidate_and_writes_what_beats_the_table(tmp_path, table):
    rows = [_row("fwd", "64x32x8x2", c, 2.0, table=True) for c in (False, True)]
    rows += [_row("fwd", "128x128x8x2", False, 0.5, status="wrong"), _row("fwd", "128x128x8x2", True, 0.5)]
    rows += [_row("fwd", "128x64x8x2", False, 1.0), _row("fwd", "128x64x8x2", True, 1.5)]
    rows += [_row("fwd", "64x64x4x2", False, 0.9)]  # ran in one mode only (the other out of resources)
    rows += [{**_row("fwd", "64x64x4x2", True, 0.0), "status": "OutOfResources: shared memory"}]
    rows += [_row("bwd_dq", "64x32x8x2", c, 1.0, table=True) for c in (False, True)]
    rows += [_row("bwd_dq", "128x64x8x2", c, 1.2) for c in (False, True)]
    summary = {b["kernel"]: b for b in attention_tune.best(rows)}
    assert summary["fwd"]["best"] == "128x64x8x2" and summary["fwd"]["speedup"] == pytest.approx(4.0 / 2.5)
    assert summary["bwd_dq"]["best"] == "64x32x8x2" and summary["bwd_dq"]["speedup"] == 1.0
    path = tmp_path / "tuned.json"
    attention_tune.write_configs(str(path), list(summary.values()), "test")
    doc = json.loads(path.read_text())
    assert [(e["kernel"], e["cfg"]) for e in doc["attention_configs"]] == [("fwd", [128, 64, 8, 2])]
    configs.load_overrides(str(path))
    assert configs.pick(90, "fwd", torch.bfloat16, 128) == configs.LaunchConfig(128, 64, 8, 2)


def test_configs_from_a_kit_run(tmp_path, table):
    rows = [_row("bwd_dkdv", "64x32x8x2", c, 3.0, table=True) for c in (False, True)]
    rows += [_row("bwd_dkdv", "64x64x4x2", c, 1.0) for c in (False, True)]
    kit = tmp_path / "gpu_check.json"
    kit.write_text(json.dumps({"device": "GPU", "date": "today", "benchmarks": {"attention_tune": {"meta": {}, "rows": rows}}}))
    out = tmp_path / "tuned.json"
    assert attention_tune.main(["--from-kit", str(kit), "--write-configs", str(out)]) == 0
    configs.load_overrides(str(out))
    assert configs.pick(90, "bwd_dkdv", torch.float16, 128) == configs.LaunchConfig(64, 64, 4, 2)
