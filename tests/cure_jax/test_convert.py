"""HF <-> Flax conversion: bit-exact round trips, sharded safetensors, clear errors, cure-convert."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cure_jax import hf_io, sharding
from cure_jax.models.qwen import QwenConfig
from cure_jax.models.qwen.params import param_table
from tests.helpers.tiny_models import make_tiny_hf_dir, make_tiny_hf_model

VARIANTS = [("qwen2", False), ("qwen2", True), ("qwen3", True)]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {(fam, tie): make_tiny_hf_dir(root, fam, tie=tie, seed=5) for fam, tie in VARIANTS}


def _read_all(hf_dir) -> dict[str, np.ndarray]:
    reader = hf_io.CheckpointReader(hf_dir)
    return {n: np.array(reader.get(n)) for n in reader.names()}


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8)


@pytest.mark.parametrize("family,tie", VARIANTS)
def test_round_trip_is_bit_exact(hf_dirs, family, tie):
    hf_dir = hf_dirs[(family, tie)]
    original = _read_all(hf_dir)
    model = hf_io.load_model(hf_dir)
    exported = hf_io.export_hf_arrays(model, dtype=np.float32)
    assert set(exported) == set(original)
    for name, arr in original.items():
        assert exported[name].dtype == arr.dtype and exported[name].shape == arr.shape, name
        assert np.array_equal(_bits(exported[name]), _bits(arr)), name


def test_loaded_params_do_not_alias_the_file(hf_dirs, tmp_path):
    """Overwriting the checkpoint after loading leaves the loaded parameters unchanged."""
    import shutil

    src = tmp_path / "copy"
    shutil.copytree(hf_dirs[("qwen2", True)], src)
    model = hf_io.load_model(src)
    before = np.array(model.embed_tokens[...])
    hf_io.save_hf_dir(hf_io.load_model(src, param_dtype=jnp.bfloat16), src, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(model.embed_tokens[...]), before)
    assert not np.array_equal(_read_all(src)["model.embed_tokens.weight"], before)


def test_safetensors_reader_matches_library(hf_dirs):
    from safetensors.numpy import load_file

    hf_dir = hf_dirs[("qwen2", False)]
    ours = _read_all(hf_dir)
    theirs = load_file(str(hf_dir / "model.safetensors"))
    assert set(ours) == set(theirs)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_bf16_checkpoint_round_trip(tmp_path):
    """bf16 file -> fp32 master params -> bf16 export is exact; the written file reads back."""
    import torch

    model = make_tiny_hf_model("qwen2", tie=False, seed=7).to(torch.bfloat16)
    hf_dir = tmp_path / "bf16"
    model.save_pretrained(str(hf_dir))
    original = _read_all(hf_dir)
    assert next(iter(original.values())).dtype == ml_dtypes.bfloat16
    flax_model = hf_io.load_model(hf_dir)
    assert flax_model.embed_tokens[...].dtype == jnp.float32
    # the same file cast on device onto a (fsdp 2 x tp 4) mesh holds the same values
    sharded = hf_io.load_model(hf_dir, mesh=sharding.make_mesh(data=1, fsdp=2, tp=4))
    up = sharded.layers.mlp.up_proj[...]
    assert up.dtype == jnp.float32 and len(up.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(up), np.asarray(flax_model.layers.mlp.up_proj[...]))
    out = hf_io.save_hf_dir(flax_model, tmp_path / "out", dtype=ml_dtypes.bfloat16,
                            base_hf_dir=hf_dir)
    again = _read_all(out)
    assert set(again) == set(original)
    for k in original:
        assert again[k].dtype == ml_dtypes.bfloat16
        assert np.array_equal(_bits(again[k]), _bits(original[k])), k
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_sharded_save_loads_in_transformers(hf_dirs, tmp_path):
    import torch
    import transformers

    hf_dir = hf_dirs[("qwen3", True)]
    model = hf_io.load_model(hf_dir)
    out = hf_io.save_hf_dir(model, tmp_path / "sharded", max_shard_size="200KB",
                            base_hf_dir=hf_dir)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 3 and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    # every file except possibly a lone big tensor stays under the limit
    for f in files:
        names = [n for n, v in index["weight_map"].items() if v == f]
        if len(names) > 1:
            assert (out / f).stat().st_size <= 200_000 + 4096
    # the multi-file directory reads back bit-exactly through the index...
    again = _read_all(out)
    for k, v in _read_all(hf_dir).items():
        assert np.array_equal(_bits(again[k]), _bits(v)), k
    # ...our streamed import reads the multi-file directory back to the same parameters...
    reloaded = hf_io.export_hf_arrays(hf_io.load_model(out))
    for k, v in hf_io.export_hf_arrays(model).items():
        assert np.array_equal(_bits(reloaded[k]), _bits(v)), k
    # ...and transformers gives the same logits from it
    tokens = torch.tensor(np.random.default_rng(0).integers(0, 512, (2, 10)))
    a = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    b = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(a(tokens).logits.numpy(), b(tokens).logits.numpy())


def test_load_onto_mesh_places_shards(hf_dirs):
    hf_dir = hf_dirs[("qwen2", False)]
    mesh = sharding.make_mesh(data=1, fsdp=2, tp=4)
    model = hf_io.load_model(hf_dir, mesh=mesh)
    q = model.layers.self_attn.q_proj[...]  # every layer's, stacked
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "tp", None, "fsdp")
    assert q.addressable_shards[0].data.shape == (2, 1, 32, 64)
    original = _read_all(hf_dir)
    for i in range(2):
        ref = original[f"model.layers.{i}.self_attn.q_proj.weight"]
        np.testing.assert_array_equal(np.asarray(q)[i], ref.reshape(4, 32, 128))
    # export gathers the shards back into exact HF tensors
    exported = hf_io.export_hf_arrays(model)
    for k, v in original.items():
        assert np.array_equal(_bits(exported[k]), _bits(v)), k


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_sharded_params_write_straight_into_the_weight_channel(hf_dirs, dtype):
    """write_hf_arrays puts each device shard (replicas once) at its place in shared memory:
    the channel then holds exactly what the gathering export gives, in HF order and layout."""
    import uuid

    from rollout.contract.weight_channel import WeightChannel

    hf_dir = hf_dirs[("qwen2", True)]
    model = hf_io.load_model(hf_dir, mesh=sharding.make_mesh(data=1, fsdp=2, tp=4))
    q = model.layers.self_attn.q_proj[...]
    assert len({str(s.index) for s in q.addressable_shards}) == 8  # really split over the mesh
    want = hf_io.export_hf_arrays(model, dtype)
    nbytes = sum(a.nbytes for a in want.values())
    with WeightChannel.create("t" + uuid.uuid4().hex[:8],
                              WeightChannel.required_capacity(want)) as ch:
        for v in (1, 2):  # both buffers full of stale bytes: every byte must be rewritten
            ch.write({"stale": np.full(nbytes // 4, 7.0, np.float32)}, version=v)
        with ch.writer(version=3) as w:
            assert hf_io.write_hf_arrays(model, w, dtype) == nbytes
        assert w.nbytes == nbytes
        with ch.read() as snap:
            assert snap.version == 3 and [i.name for i in snap.manifest] == list(want)
            for name, got in snap.items():
                assert got.dtype == np.dtype(dtype) and got.shape == want[name].shape, name
                assert np.array_equal(_bits(got), _bits(want[name])), name


def _corrupt(hf_dir: pathlib.Path, out: pathlib.Path, drop=None, reshape=None, add=None):
    tensors = _read_all(hf_dir)
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    if add:
        tensors[add] = np.zeros((2,), np.float32)
    out.mkdir()
    specs = [(k, v.shape, v.dtype) for k, v in tensors.items()]
    hf_io.write_safetensors(out / "model.safetensors", specs, tensors.values())
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    return out


def test_clear_errors(hf_dirs, tmp_path):
    hf_dir = hf_dirs[("qwen2", False)]
    name = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(ValueError, match=rf"missing tensor '{name}'"):
        hf_io.load_model(_corrupt(hf_dir, tmp_path / "a", drop=name))
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{name}' has shape \(255, 128\)"):
        hf_io.load_model(_corrupt(hf_dir, tmp_path / "b", reshape=name))
    with pytest.raises(ValueError, match="'model.layers.7.foo' is not a parameter"):
        hf_io.load_model(_corrupt(hf_dir, tmp_path / "c", add="model.layers.7.foo"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "config.json").write_text((hf_dir / "config.json").read_text())
        hf_io.load_model(tmp_path / "d")
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: unknown architecture"):
        hf_io.load_model(tmp_path / "e")
    with pytest.raises(ValueError, match="not a safetensors file"):
        (tmp_path / "f").mkdir()
        (tmp_path / "f" / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
        hf_io.SafetensorsFile(tmp_path / "f" / "model.safetensors")


def test_param_table_covers_model_state():
    from flax import nnx

    for preset in ("tiny-qwen2", "tiny-qwen2-tied", "tiny-qwen3", "qwen3-4b"):
        cfg = QwenConfig.preset(preset)
        abstract = hf_io.abstract_model(cfg)
        flat = dict(nnx.to_flat_state(nnx.state(abstract)))
        table = param_table(cfg)
        assert {s.flax_path for s in table} == set(flat)
        for s in table:
            shape = tuple(flat[s.flax_path].get_value().shape)
            assert shape == s.stored_shape(cfg.num_hidden_layers)  # a layer's: all, stacked
            assert int(np.prod(s.hf_shape)) == int(np.prod(s.flax_shape))


def test_plan_shards_and_sizes():
    specs = [("a", (10,), np.float32), ("b", (10,), np.float32), ("c", (100,), np.float32),
             ("d", (1,), np.float32)]
    assert hf_io.plan_shards(specs, 80) == [[0, 1], [2], [3]]
    assert hf_io.parse_size("5GB") == 5 * 10**9 and hf_io.parse_size("2MiB") == 2 * 2**20
    with pytest.raises(ValueError, match="size 'lots'"):
        hf_io.parse_size("lots")


# ---------------------------------------------------------------------------------------------
# cure-convert
# ---------------------------------------------------------------------------------------------
def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "cure_jax.convert_main", *args],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_cli_usage_errors_are_one_line_exit_2():
    for args, fragment in ((["verify", "--no_such_flag=1"], "no_such_flag"),
                           (["hf-to-safetensors"], "usage: cure-convert")):
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cure-convert: error: "), r.stderr
        assert fragment in lines[0]


def _inprocess(capsys, *args: str) -> tuple[int, str, str]:
    """Run cure-convert's main in this process (absl flags parsed and reset around it)."""
    from absl import flags

    from cure_jax import convert_main

    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["cure-convert", *args])
    code = 0
    try:
        convert_main.main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr()
    return code, out.out, out.err


def _hf_logits(hf_dir, tokens):
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor(tokens)).logits.numpy()


@pytest.mark.slow
def test_cli_hf_to_orbax_to_hf_and_verify(hf_dirs, tmp_path):
    src = hf_dirs[("qwen2", False)]
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    r = _cli("hf-to-orbax", f"--hf_dir={src}", f"--ckpt_dir={ckpt}")
    assert r.returncode == 0, r.stderr
    assert (ckpt / "params").is_dir() and (ckpt / "config.json").is_file()
    r = _cli("orbax-to-hf", f"--ckpt_dir={ckpt}", f"--hf_dir={out}", f"--base_hf_dir={src}",
             "--max_shard_size=400KB", "--dtype=float32")
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    # complete directory: transformers loads it and gives the same logits, bit for bit
    tokens = np.random.default_rng(3).integers(0, 512, (2, 9))
    np.testing.assert_array_equal(_hf_logits(out, tokens), _hf_logits(src, tokens))
    r = _cli("verify", f"--hf_dir={out}", f"--ckpt_dir={ckpt}")
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"max_abs_err", "max_rel_err"}
    assert float(fields["max_abs_err"]) <= 1e-4 and float(fields["max_rel_err"]) <= 1e-4


def test_orbax_to_hf_reads_training_checkpoints(hf_dirs, tmp_path, capsys):
    """A cure-train Checkpointer directory (params inside the train state) converts exactly."""
    from flax import nnx

    from cure_jax import checkpoint as ckpt_lib

    src = hf_dirs[("qwen3", True)]
    model = hf_io.load_model(src, mesh=sharding.make_mesh(data=1, fsdp=2, tp=4))  # saved sharded
    train_state = {"step": jnp.asarray(7, jnp.int32), "params": nnx.to_pure_dict(nnx.state(model)),
                   "opt_state": {"mu": jnp.zeros((3,))}}
    ck = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    ck.save(3, {**train_state, "params": jax.tree.map(lambda x: x * 0, train_state["params"])})
    ck.save(5, train_state)
    ck.close()
    out = tmp_path / "hf"
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={tmp_path / 'run'}",
                                   f"--hf_dir={out}", f"--base_hf_dir={src}")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    original, again = _read_all(src), _read_all(out)
    assert set(again) == set(original)
    for k in original:
        assert np.array_equal(_bits(again[k]), _bits(original[k])), k
    # --step picks an older one (all zeros there)
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={tmp_path / 'run' / 'checkpoints'}",
                              f"--hf_dir={tmp_path / 'old'}", f"--base_hf_dir={src}", "--step=3")
    assert code == 0, err
    assert not _read_all(tmp_path / "old")["model.norm.weight"].any()
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={tmp_path / 'run'}",
                              f"--hf_dir={tmp_path / 'x'}", f"--base_hf_dir={src}", "--step=4")
    assert code == 2 and "no step 4 (available: [3, 5])" in err


def test_params_checkpoint_with_one_subtree_per_layer_converts(hf_dirs, tmp_path):
    """A params checkpoint written before the layers were stacked (layers/<i>/...) still
    restores, stacked, and exports the HF tensors bit for bit."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from cure_jax import convert_main
    from tests.helpers.layouts import per_layer

    hf_dir = hf_dirs[("qwen2", True)]
    model = hf_io.load_model(hf_dir)
    ckpt = tmp_path / "older"
    ckpt.mkdir()
    older = per_layer(nnx.to_pure_dict(nnx.state(model)), model.cfg.num_hidden_layers)
    assert "0" in older["layers"]
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(ckpt / "params", older)
    checkpointer.wait_until_finished()
    (ckpt / "config.json").write_text((hf_dir / "config.json").read_text())
    state = convert_main.restore_params(ckpt, model.cfg)
    exported = hf_io.export_hf_arrays(state, cfg=model.cfg)
    original = _read_all(hf_dir)
    assert set(exported) == set(original)
    for name, arr in original.items():
        assert np.array_equal(_bits(exported[name]), _bits(arr)), name


def test_cli_errors_are_one_line(hf_dirs, tmp_path, capsys):
    src = hf_dirs[("qwen2", False)]
    code, _, err = _inprocess(capsys, "hf-to-orbax", f"--hf_dir={tmp_path / 'nope'}",
                              f"--ckpt_dir={tmp_path / 'c'}")
    assert code == 2 and err.count("\n") == 1 and f"{tmp_path / 'nope'}" in err
    code, _, err = _inprocess(capsys, "hf-to-orbax", f"--hf_dir={src}")
    assert code == 2 and "--ckpt_dir is required" in err
    # params of one shape, config of another: the mismatched parameter is named
    ckpt = tmp_path / "ckpt"
    code, _, err = _inprocess(capsys, "hf-to-orbax", f"--hf_dir={src}", f"--ckpt_dir={ckpt}")
    assert code == 0, err
    wide = tmp_path / "wide"
    wide.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 384}))
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={ckpt}",
                              f"--hf_dir={tmp_path / 'o'}", f"--base_hf_dir={wide}")
    assert code == 2 and "parameter 'layers/mlp/down_proj' has shape (2, 128, 256), config " \
        "expects (2, 128, 384)" in err, err
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={ckpt}",
                              f"--hf_dir={tmp_path / 'o'}", f"--base_hf_dir={hf_dirs[('qwen3', True)]}")
    assert code == 2 and "checkpoint has no parameter" in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"],
                                                 "model_type": "gpt2"}))
    code, _, err = _inprocess(capsys, "hf-to-orbax", f"--hf_dir={bad}", f"--ckpt_dir={tmp_path / 'd'}")
    assert code == 2 and "unknown architecture" in err and "GPT2LMHeadModel" in err
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={tmp_path / 'empty'}",
                              f"--hf_dir={tmp_path / 'e'}")
    assert code == 2 and "checkpoint directory not found" in err
    code, _, err = _inprocess(capsys, "hf-to-safetensors")
    assert code == 2 and err == ("cure-convert: error: usage: cure-convert "
                                 "{hf-to-orbax|orbax-to-hf|verify} --flags ...\n")


@pytest.mark.slow
def test_converted_dir_greedy_generates_like_transformers_in_vllm(hf_dirs, tmp_path, capsys):
    """HF -> Orbax -> HF, then the real vLLM CPU engine (own process) greedy-decodes the
    converted directory to exactly the tokens transformers generates from the original."""
    import os
    import subprocess
    import sys

    import torch
    import transformers

    src = hf_dirs[("qwen2", False)]
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    assert _inprocess(capsys, "hf-to-orbax", f"--hf_dir={src}", f"--ckpt_dir={ckpt}")[0] == 0
    code, _, err = _inprocess(capsys, "orbax-to-hf", f"--ckpt_dir={ckpt}", f"--hf_dir={out}",
                              f"--base_hf_dir={src}", "--dtype=float32")
    assert code == 0, err
    prompts = [[5, 17, 33, 2], [100, 7], [9, 9, 9, 9, 9, 9], [300, 42, 1]]
    n_new = 12
    script = pathlib.Path(__file__).parents[1] / "helpers" / "vllm_greedy.py"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(script), str(out), json.dumps(prompts), str(n_new)],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])["tokens"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None   # vLLM runs with ignore_eos
    want = []
    with torch.no_grad():
        for p in prompts:
            seq = hf.generate(torch.tensor([p]), max_new_tokens=n_new, do_sample=False,
                              pad_token_id=0)
            want.append(seq[0, len(p):].tolist())
    assert all(len(w) == n_new for w in want)
    assert got == want


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3"])
def test_saved_without_base_dir_loads_in_transformers(tmp_path, preset):
    """A randomly initialised Flax model saved with our generated config.json is the same model
    in transformers (config fields such as head_dim, bias and tying are written correctly)."""
    import torch
    import transformers
    from flax import nnx

    from cure_jax.models.qwen import Qwen

    cfg = QwenConfig.preset(preset)
    model = Qwen(cfg, rngs=nnx.Rngs(4))
    out = hf_io.save_hf_dir(model, tmp_path / preset, dtype=np.float32)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 11))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(nnx.jit(lambda m, t: m.logits(m(t)))(model, jnp.asarray(tokens)))
    assert np.abs(ours - ref).max() <= 1e-4


def test_load_hf_params_into_abstract_state(hf_dirs):
    """The learner's path: abstract state (no memory) -> filled, sharded state -> pure dict."""
    from flax import nnx

    hf_dir = hf_dirs[("qwen2", True)]
    cfg = QwenConfig.from_hf_dir(hf_dir)
    graphdef, abstract = nnx.split(hf_io.abstract_model(cfg, param_dtype=jnp.bfloat16))
    mesh = sharding.make_mesh(data=2, fsdp=4, tp=1)
    state = hf_io.load_hf_params(hf_dir, abstract, mesh)
    params = nnx.to_pure_dict(state)
    emb = params["embed_tokens"]
    assert emb.dtype == jnp.bfloat16 and emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    model = nnx.merge(graphdef, state)
    exported = hf_io.export_hf_arrays(model, dtype=ml_dtypes.bfloat16)
    ref = _read_all(hf_dir)["model.layers.1.mlp.down_proj.weight"].astype(ml_dtypes.bfloat16)
    assert np.array_equal(_bits(exported["model.layers.1.mlp.down_proj.weight"]), _bits(ref))
