"""Packaging: what the wheel ships, its metadata, ``__version__``, test tiers, torch CPU build.

The wheel is built from a copy of the checkout (so the shared tree gets no ``build/``), with
``--no-build-isolation`` (the venv's setuptools; no index needed): ~5 s.
"""

from __future__ import annotations

import ast
import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "outputs", "data", "*.egg-info", "__pycache__",
    ".*_cache", "*.ckpt", "*.onnx", "rank_*", "kernel_meta",
)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*cmd, "-w", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("tkfac_ms-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_string(wheel.read(name).decode())


def test_wheel_ships_the_two_libraries_with_py_typed(wheel):
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tkfac_ms", "reference_torch"}  # not model_zoo, parity, bench, tests
    for pkg in ("tkfac_ms", "reference_torch"):
        assert f"{pkg}/py.typed" in names
        assert f"{pkg}/__init__.py" in names
    assert "tkfac_ms/csrc/conv_phi.cc" in names  # the C++ kernel, compiled on first use
    assert "tkfac_ms/op_support/mindspore-2.10.0.json" in names  # the audit's support table
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_wheel_metadata_license_version_and_lean_core_dependencies(wheel):
    meta = _metadata(wheel)
    assert meta["Version"] == PYPROJECT["project"]["version"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert "tkfac-ms developers" in meta["Author"]
    requires = meta.get_all("Requires-Dist")
    core = sorted(r for r in requires if "extra ==" not in r)
    assert core == ["mindspore==2.10.0", "numpy<2"]  # an optimizer-only user gets no more
    extras = set(meta.get_all("Provides-Extra"))
    assert extras == {"zoo", "torch", "onnx", "dev"}
    for heavy in ("scikit-learn", "matplotlib", "pyyaml", "torch"):
        assert not any(r.startswith(heavy) and "extra ==" not in r for r in requires), heavy
    assert not any("tqdm" in r for r in requires)  # nothing imports it


def test_license_file_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_version_is_pyprojects():
    import reference_torch
    import tkfac_ms

    version = PYPROJECT["project"]["version"]
    assert tkfac_ms.__version__ == version
    assert reference_torch.__version__ == version


def test_dev_extra_holds_everything_the_tests_import():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["dev"][0] == "tkfac-ms[zoo,torch,onnx]"
    assert {"pytest", "ruff", "mypy"} <= set(extras["dev"])
    assert {"pyyaml", "matplotlib", "scikit-learn"} <= set(extras["zoo"])


def test_a_local_cpu_build_outranks_the_plain_pin(tmp_path):
    """The mechanism of scripts/setup_env.sh: with both wheels visible, pip picks ``+cpu``.

    A fresh Linux machine sees PyPI's ``torch-X`` (the CUDA build) and the CPU index's
    ``torch-X+cpu``; two stand-in wheels play them here, offline.
    """
    (pin,) = PYPROJECT["project"]["optional-dependencies"]["torch"]
    version = pin.split("==")[1]
    for v in (version, f"{version}+cpu"):
        info = f"torch-{v}.dist-info"
        with zipfile.ZipFile(tmp_path / f"torch-{v}-py3-none-any.whl", "w") as z:
            z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {v}\n")
            z.writestr(
                f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            z.writestr(f"{info}/RECORD", "")
    env = {"PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
         "--no-index", "--find-links", str(tmp_path), pin],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Would install torch-{version}+cpu" in proc.stdout, proc.stdout
    script = (ROOT / "scripts/setup_env.sh").read_text()
    assert "https://download.pytorch.org/whl/cpu" in script


# --------------------------------------------------------------------------- test tiers


def _is_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(d) == "pytest.mark.slow" for d in decorators)


#: Files whose every test needs one expensive fixture (named, with the reason).
ALL_SLOW = {
    "test_distributed.py": "every test reads one msrun run of 2 workers + 1 (~55-95 s)",
}


def test_every_test_file_keeps_a_fast_test():
    """``scripts/run_tests.sh --fast`` (``-m "not slow"``) runs something from every file."""
    no_fast = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name in ALL_SLOW:
            continue
        tree = ast.parse(path.read_text())
        module_slow = any(
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            and "slow" in ast.unparse(node.value)
            for node in tree.body
        )
        fast = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
            and not _is_slow(node.decorator_list)
        ]
        if module_slow or not fast:
            no_fast.append(path.name)
    assert no_fast == [], f"files with no fast test: {no_fast}"


def test_run_tests_fast_flag_deselects_slow():
    script = (ROOT / "scripts/run_tests.sh").read_text()
    assert 'args+=(-m "not slow")' in script
    ci = (ROOT / ".ci/run").read_text()
    assert "bash scripts/run_tests.sh\n" in ci  # CI runs the full suite, no --fast
    assert "slow" in "".join(PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
