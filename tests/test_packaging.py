"""Install layout: namespaced imports, a wheel without generic top-level modules, third-party plugins."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty_plugin"


def _pip(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    res = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT))
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("shala_bench-*.whl")
    return whl


def test_wheel_namespaces_plugins_and_baselines(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "shala_bench/baselines/mvae.py" in names
    assert "shala_bench/plugins/__init__.py" in names
    assert "shala_bench/commands/run.py" in names and "shala_bench/data/cache.py" in names
    tops = {n.split("/")[0] for n in names}
    assert not {"baselines", "plugins", "tests"} & tops, tops
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    assert "[shala_bench]" in text and "mvae = shala_bench.baselines.mvae" in text


def test_installed_names_resolve_to_the_repo_folders(tmp_path):
    # from a neutral folder, so the repo root is not on sys.path
    code = ("import shala_bench.baselines.mvae as m, shala_bench.plugins as p, pathlib, importlib.util as u; "
            "print(pathlib.Path(m.__file__).parent.name, pathlib.Path(p.__file__).parent.name, "
            "u.find_spec('baselines') is None and u.find_spec('plugins') is None)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["baselines", "plugins", "True"]


def test_third_party_plugin_is_listed_and_runs(tmp_path):
    target = tmp_path / "site"
    res = _pip("install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target), str(FIXTURE))
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "PYTHONPATH": str(target) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # one fresh interpreter lists it and runs it (the plugin is found through its installed entry point)
    code = ("import sys; from shala_bench.cli import main; sys.exit(main(['list', 'models']) or main(['run', "
            "'--model', 'toy-meanfusion', '--profile', 'smoke', '--no-progress', '--results', sys.argv[1]]))")
    ran = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    line = next(l for l in ran.stdout.splitlines() if l.startswith("toy-meanfusion"))
    assert "shala-bench-toy-plugin 0.0.1" in line
    (record,) = (tmp_path / "runs" / "polymnist-synth" / "toy-meanfusion").rglob("record.json")
    metrics = __import__("json").loads(record.read_text())["metrics"]
    assert isinstance(metrics["kid_mean"], float) and metrics["metric_versions"]["toy-kid"] == 1
