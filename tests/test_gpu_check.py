"""The GPU kit (scripts/gpu_check.py, scripts/render_results.py) without a GPU: the dry run, the
fail-soft runner and its budgets on fake parts, junit parsing, the summary, the file limits, the gloo
probe keeping its answers through a crashed or stuck rank, and the
README section rendered from a fake results directory."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


gc = _load("gpu_check")
rr = _load("render_results")
PY = sys.executable


# --------------------------------------------------------------------------- dry run

def test_dry_run_lists_parts_and_checks_what_they_use():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                          env={**os.environ, "PYTHON": PY}, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    for p in gc.default_parts():
        assert p.name in out, p.name
    assert "benchmarks/host_overhead.py --quick --no-stub --out" in out and "odysseus_kernels.kernels.aot" in out
    assert proc.returncode == 0, out + proc.stderr
    assert "dry run: OK" in out


def test_dry_run_reports_a_missing_script(monkeypatch, capsys):
    parts = [gc.Part("ghost", 5, [PY, "benchmarks/ghost.py"], "bench", uses=["bench:benchmarks/ghost.py"]),
             gc.Part("badmod", 5, [PY, "-c", "pass"], uses=["module:odysseus_kernels.no_such_module"])]
    assert gc.dry_run(parts) == 1
    out = capsys.readouterr().out
    assert "ghost: benchmarks/ghost.py does not exist" in out
    assert "import odysseus_kernels.no_such_module failed" in out


# --------------------------------------------------------------------------- fail-soft runner

def test_parts_fail_soft_and_budgets(tmp_path):
    out, tmp = str(tmp_path / "out"), str(tmp_path / "tmp")
    marker = tmp_path / "child_survived"
    parts = [
        gc.Part("fails", 20, [PY, "-c", "import sys; print('boom'); sys.exit(3)"]),
        # over budget: the part and the child it started must both be stopped
        gc.Part("slow", 2, ["bash", "-c", f"(sleep 4; touch {marker}) & sleep 30"]),
        gc.Part("writes_json", 20, [PY, "-c", "import json,sys; json.dump({'x': 1.5}, open(sys.argv[1], 'w'))",
                                    "{json}"], "json"),
        gc.Part("bench", 20, [PY, "-c", "import json,os,sys; os.makedirs(sys.argv[1]); json.dump({'meta': {'d': 1}, "
                              "'results': [{'ms': 2.0, 'ratio': 1.1}]}, open(os.path.join(sys.argv[1], 'b.json'), 'w'))",
                              "{pdir}"], "bench"),
    ]
    t0 = time.monotonic()
    recs = {r["name"]: r for r in gc.run_parts(parts, out, total_budget_s=120, tmp=tmp)}
    assert time.monotonic() - t0 < 25
    assert recs["fails"]["status"] == "failed" and recs["fails"]["rc"] == 3 and "boom" in recs["fails"]["error"]
    assert recs["slow"]["status"] == "timeout" and recs["slow"]["wall_s"] < 6 and "budget" in recs["slow"]["error"]
    assert recs["writes_json"]["status"] == "ok" and recs["writes_json"]["data"] == {"x": 1.5}
    assert recs["bench"]["benchmarks"] == {"b": {"meta": {"d": 1}, "rows": [{"ms": 2.0, "ratio": 1.1}]}}
    time.sleep(4.5)
    assert not marker.exists(), "the over-budget part's child process was not stopped"
    log = open(os.path.join(out, "parts.log")).read()
    assert "boom" in log and "slow: TIMEOUT" in log


def test_total_budget_cuts_and_skips_parts(tmp_path):
    parts = [gc.Part("first", 60, ["sleep", "30"]), gc.Part("second", 60, [PY, "-c", "pass"])]
    t0 = time.monotonic()
    recs = gc.run_parts(parts, str(tmp_path / "o"), total_budget_s=6, tmp=str(tmp_path / "t"))
    assert time.monotonic() - t0 < 15
    assert recs[0]["status"] == "timeout" and recs[0]["budget_s"] <= 6
    assert recs[1]["status"] == "skipped" and "no time left" in recs[1]["error"]


def test_pytest_part_counts_and_first_failure(tmp_path):
    test = tmp_path / "test_fake.py"
    test.write_text("import pytest\n"
                    "def test_a(): pass\n"
                    "def test_b(): assert 1 == 2, 'first bad'\n"
                    "def test_c(): raise RuntimeError('second bad')\n"
                    "@pytest.mark.skip(reason='no')\n"
                    "def test_d(): pass\n")
    part = gc.Part("tests_fake", 120, [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), "--rootdir",
                                       str(tmp_path), "-c", os.devnull, "--junitxml={junit}"], "pytest")
    (rec,) = gc.run_parts([part], str(tmp_path / "o"), total_budget_s=120, tmp=str(tmp_path / "t"))
    t = rec["tests"]
    assert rec["status"] == "failed"
    assert (t["passed"], t["failed"], t["skipped"], t["total"]) == (1, 2, 1, 4)
    assert t["by_file"] == {"test_fake": {"passed": 1, "failed": 2, "errors": 0, "skipped": 1}}
    assert "test_b" in t["first_failure"] and "first bad" in t["first_failure"]
    assert "test_b" in open(os.path.join(tmp_path, "o", "pytest.log")).read()


def test_summary_and_file_limits(tmp_path, monkeypatch):
    recs = [{"name": "env", "status": "ok", "wall_s": 1.0, "budget_s": 15, "cmd": "x", "rc": 0, "error": None,
             "data": {"device": {"name": "NVIDIA H200"}, "torch": "2.11", "triton": "3.6.0", "cuda": "13.0",
                      "python": "3.12", "nvcc": "V13.0"}},
            {"name": "tests_cuda", "status": "failed", "wall_s": 9.0, "budget_s": 45, "cmd": "y", "rc": 1,
             "error": "tail", "tests": {"passed": 3, "failed": 1, "errors": 0, "skipped": 0, "total": 4,
                                         "first_failure": "t::x\nAssertionError"}},
            {"name": "bench_attention_block", "status": "ok", "wall_s": 5.0, "budget_s": 35, "cmd": "z", "rc": 0,
             "error": None, "benchmarks": {"attention_block": {"meta": {}, "rows": [{"seq": 4096, "ms": 1.25, "ratio": 1.5}]}}}]
    doc = gc.assemble(recs, commit="abc123", wall_s=20.0)
    assert doc["device"] == "NVIDIA H200" and doc["versions"]["triton"] == "3.6.0" and doc["commit"] == "abc123"
    assert doc["tests"]["tests_cuda"]["failed"] == 1 and doc["benchmarks"]["attention_block"]["rows"][0]["ms"] == 1.25
    md = gc.render_summary(doc)
    assert "NVIDIA H200" in md and "| tests_cuda | 3 | 1 | 0 | 0 | 4 |" in md and "| 4096 | 1.25 | 1.5 |" in md
    assert "AssertionError" in md and "### tests_cuda: failed" in md
    # file limits: a too-big file is cut below the limit, extra files beyond 8 are dropped
    monkeypatch.setattr(gc, "MAX_FILE_BYTES", 1000)
    for name in ["gpu_check.json", "SUMMARY.md", "pytest.log", "parts.log"] + [f"extra{i}.md" for i in range(6)]:
        (tmp_path / name).write_text("x" * 10)
    (tmp_path / "pytest.log").write_text("a" * 5000)
    gc._cap_files(str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 8 and {"gpu_check.json", "SUMMARY.md", "pytest.log", "parts.log"} <= set(files)
    assert os.path.getsize(tmp_path / "pytest.log") <= 1000


# --------------------------------------------------------------------------- render_results

def _fake_run(root, name, date, device, commit, ms):
    d = root / name
    d.mkdir(parents=True)
    doc = {"date": date, "commit": commit, "device": device, "wall_s": 300.0,
           "versions": {"torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"},
           "parts": [{"name": "env", "status": "ok"}, {"name": "bench_tp_gemm", "status": "timeout"}],
           "tests": {"tests_cuda": {"passed": 10, "failed": 0, "errors": 0, "skipped": 2}},
           "benchmarks": {"attention_block": {"rows": [{"seq": 4096, "ms": ms, "ratio": 1.4}]}},
           "compile_gate": {"compile_gate-triton3.6.0.json": {"meta": {"triton": "3.6.0"}, "violations": 0, "summary": [
               {"family": "attention", "arch": 90, "cases": 40, "max_shared": 200000, "max_regs": 255, "spilling": 0,
                "wgmma": 30, "violations": 0}]}}}
    (d / "gpu_check.json").write_text(json.dumps(doc))
    return d


def test_render_results_fills_the_readme_from_the_newest_run(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    _fake_run(results, "2026-11-30-nvidia-h100", "2026-11-30 10:00:00 UTC", "NVIDIA H100", "1111111111111111", 9.0)
    _fake_run(results, "2026-12-01-nvidia-h200", "2026-12-01 09:00:00 UTC", "NVIDIA H200", "2222222222222222", 3.25)
    (results / "compile_gate").mkdir()  # a results dir without gpu_check.json is ignored
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{rr.BEGIN}\nold text\n{rr.END}\n\nafter\n")
    args = ["--readme", str(readme), "--results", str(results)]
    assert rr.main(args + ["--check"]) == 1
    assert rr.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\nafter\n") and "old text" not in text
    body = text.split(rr.BEGIN)[1].split(rr.END)[0]
    assert "NVIDIA H200" in body and "2026-12-01 09:00:00 UTC" in body and "`222222222222`" in body
    assert "NVIDIA H100" not in body and "3.25" in body
    assert "benchmarks/results/2026-12-01-nvidia-h200/SUMMARY.md" in body
    assert "not ok: bench_tp_gemm (timeout)" in body and "| tests_cuda | 10 | 0 | 0 | 2 |" in body
    assert "| attention | 90 | 40 | 200000 | 255 | 0 | 30 | 0 |" in body
    assert rr.main(args + ["--check"]) == 0


def test_render_results_keeps_what_only_an_earlier_run_measured(tmp_path):
    results = tmp_path / "results"
    _fake_run(results, "2026-12-01-nvidia-h200", "2026-12-01 09:00:00 UTC", "NVIDIA H200", "1111111111111111", 7.5)
    d = _fake_run(results, "2026-12-02-nvidia-h200", "2026-12-02 09:00:00 UTC", "NVIDIA H200", "2222222222222222", 3.25)
    doc = json.loads((d / "gpu_check.json").read_text())  # a run of some parts only: no gate, other benchmark
    doc.update(compile_gate={}, benchmarks={"attention_tune": {"rows": [{"kernel": "fwd", "ms": 1.5}]}})
    (d / "gpu_check.json").write_text(json.dumps(doc))
    body = rr.render(str(results), str(tmp_path))
    newer, older = body.split("From an earlier run")
    assert "`222222222222`" in newer and "attention_tune" in newer and "1.5" in newer and "tests_cuda" in newer
    assert "`111111111111`" in older and "**attention_block**" in older and "7.5" in older
    assert "| attention | 90 | 40 |" in older and "tests_cuda" not in older and "attention_tune" not in older
    # an earlier run with nothing the newer ones lack is left out
    _fake_run(results, "2026-11-30-nvidia-h200", "2026-11-30 09:00:00 UTC", "NVIDIA H200", "0000000000000000", 9.0)
    assert "000000000000" not in rr.render(str(results), str(tmp_path))


def test_render_results_without_runs_and_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{rr.BEGIN}\n{rr.END}\n")
    assert rr.main(["--readme", str(readme), "--results", str(tmp_path / "none")]) == 0
    assert "No GPU results yet" in readme.read_text()
    readme.write_text("no markers\n")
    assert rr.main(["--readme", str(readme), "--results", str(tmp_path)]) == 2
    with pytest.raises(ValueError):
        rr.fill(f"{rr.END}\n{rr.BEGIN}\n", "x")


def _probe_rank_dies(rank, world, init, out):
    """A probe rank pair where rank 1 dies first and rank 0 writes its answer to one collective only
    after that (as a survivor whose collective returned just before its peer crashed), then waits."""
    dying = out + ".rank1-exiting"
    if rank == 1:
        open(dying, "w").close()
        os._exit(3)
    t0 = time.monotonic()
    while not os.path.exists(dying) and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    time.sleep(1.5)  # the probe has seen rank 1's exit by now (it looks every 0.2 s)
    with open(out, "w") as f:
        json.dump({"all_reduce": "ok"}, f)
    time.sleep(60)


def _probe_rank_hangs(rank, world, init, out):
    time.sleep(60)


def test_gloo_probe_keeps_what_it_got_before_a_crash_or_its_deadline():
    t0 = time.monotonic()
    res = gc.probe_gloo(deadline_s=30, rank_fn=_probe_rank_dies, grace_s=8)
    assert res["crash"] == "rank 1 exited with code 3", res
    assert res["ops"]["all_reduce"] == "ok", res  # written after rank 1's exit, within the survivors' grace
    assert res["ops"]["p2p"] == "not reached: rank 1 exited with code 3", res
    res = gc.probe_gloo(deadline_s=2, rank_fn=_probe_rank_hangs)
    assert res["crash"] == "stopped after 2 s (a rank was still waiting)"
    assert all(v.startswith("not reached") for v in res["ops"].values())
    assert time.monotonic() - t0 < 50  # neither waited for its ranks' 60 s


def test_pytest_part_over_budget_still_reports_the_tests_it_ran(tmp_path):
    test = tmp_path / "test_slow.py"
    test.write_text("import time\n"
                    "def test_a(): pass\n"
                    "def test_b(): time.sleep(60)\n")
    part = gc.Part("tests_slow", 12, [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), "--rootdir",
                                      str(tmp_path), "-c", os.devnull, "--junitxml={junit}"], "pytest")
    t0 = time.monotonic()
    (rec,) = gc.run_parts([part], str(tmp_path / "o"), total_budget_s=120, tmp=str(tmp_path / "t"))
    assert time.monotonic() - t0 < 20
    assert rec["status"] == "timeout", rec
    assert (rec["tests"]["passed"], rec["tests"]["total"], rec["tests"].get("interrupted")) == (1, 1, 1), rec["tests"]


# --------------------------------------------------------------------------- build fallback

def test_build_without_pyproject_makes_the_module(tmp_path):
    """The kit's build for a setuptools older than 77 (which refuses pyproject.toml's license string):
    setup.py and csrc/ alone, built in a scratch folder, the module copied into the root given. Built
    here without CUDA (CUDA_HOME pointing nowhere) to keep it short; the root is a copy, so the
    checkout's own module is not touched. Loaded in place of the checkout's module (in a fresh
    interpreter), that CPU-only build is available but has no CUDA kernels: extension_has_cuda() says so."""
    import shutil

    root = tmp_path / "root"
    (root / "odysseus_kernels").mkdir(parents=True)
    shutil.copy2(os.path.join(ROOT, "setup.py"), root)
    shutil.copytree(os.path.join(ROOT, "csrc"), root / "csrc")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\nlicense = 'not even valid'\n")  # never read
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "no-cuda"), MAX_JOBS="2")
    assert gc.build_without_pyproject(env, root=str(root)) == 0
    built = list((root / "odysseus_kernels").glob("_C*.so"))
    assert len(built) == 1 and built[0].read_bytes()[:4] == b"\x7fELF"
    assert gc.setuptools_too_old("75.8.0") and not gc.setuptools_too_old("80.9.0") and not gc.setuptools_too_old("77.0.3")
    code = f"""
import importlib.util, sys
import torch  # loads libc10 and libtorch, which the module links against
spec = importlib.util.spec_from_file_location("odysseus_kernels._C", {str(built[0])!r})
sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # what `from . import _C` finds
from odysseus_kernels._extension_loader import extension_available, extension_has_cuda
assert extension_available() and extension_has_cuda() is False
print("ok")
"""
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_tee_echoes_timestamped_progress_and_returns_the_output(capsys):
    code = ("import sys, time\n"
            "sys.stderr.write('\\r[#...] 1/3 ring'); sys.stderr.flush(); time.sleep(0.3)\n"
            "sys.stderr.write('\\r[##..] 2/3 zigzag\\n'); print('table'); sys.exit(4)")
    rc, text = gc.tee([PY, "-c", code])
    shown = capsys.readouterr().out.splitlines()
    assert rc == 4 and text.split("\n") == ["", "[#...] 1/3 ring", "[##..] 2/3 zigzag", "table"]
    # every line echoed with the seconds since the start; the bar's carriage returns became line ends
    assert [line.split("] ", 1)[1] for line in shown if "/3" in line] == ["[#...] 1/3 ring", "[##..] 2/3 zigzag"]
    stamps = [float(line[1:].split(" s]")[0]) for line in shown if "/3" in line]
    assert stamps[1] - stamps[0] >= 0.25


def test_a_part_stopped_by_its_budget_keeps_the_progress_it_echoed(tmp_path):
    code = ("import sys, time\n"
            "sys.stderr.write('\\r[#..] 1/3 tp_sp'); sys.stderr.flush(); time.sleep(30)")
    script = tmp_path / "slow.py"
    script.write_text(f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})\n"
                      f"import gpu_check\ngpu_check.tee([sys.executable, '-c', {code!r}])\n")
    recs = gc.run_parts([gc.Part("playground", 3, [PY, str(script)])], str(tmp_path / "o"), total_budget_s=30,
                        tmp=str(tmp_path / "t"))
    assert recs[0]["status"] == "timeout"
    log = open(os.path.join(str(tmp_path / "o"), "parts.log")).read()
    assert "1/3 tp_sp" in log
