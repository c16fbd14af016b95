"""The model presets ship inside the package: `QwenConfig.preset` works from a built wheel,
with the repository nowhere on the path."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRESETS = ROOT / "cure_jax" / "models" / "qwen" / "presets"


def test_presets_work_from_a_built_wheel(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("cure_jax", "rollout", "sandbox"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=src,
                   capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("cure_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"cure_jax/models/qwen/presets/{p.name}" for p in PRESETS.glob("*.json")} <= names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")

    # The development install's finder (if any) is dropped: only the wheel's files can serve.
    code = ("import json, sys; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            "import cure_jax; from cure_jax.models.qwen import QwenConfig; "
            "c = QwenConfig.preset('qwen2.5-7b-instruct'); "
            "print(json.dumps([cure_jax.__file__, c.num_hidden_layers, c.hidden_size, "
            f"c.num_key_value_heads, {str(ROOT)!r} in sys.path]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tmp_path / "site"), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    where, layers, hidden, kv, repo_on_path = json.loads(r.stdout.strip().splitlines()[-1])
    assert not repo_on_path
    assert pathlib.Path(where).is_relative_to(tmp_path / "site"), where
    preset = json.loads((PRESETS / "qwen2.5-7b-instruct.json").read_text())
    assert (layers, hidden, kv) == (preset["num_hidden_layers"], preset["hidden_size"],
                                    preset["num_key_value_heads"])
