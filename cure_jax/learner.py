"""Train state and the sharded policy-gradient update of one experience batch.

One `Learner.update(state, batch)`:
  1. orders rows by length and cuts micro-batches, each padded to the data-parallel size and
     trimmed to its own length bucket, so padding is not most of the compute (cure_jax.row_plan;
     with several processes each feeds its own rows and the plan agrees everywhere); with
     `share_prompts` each device runs its rows' prompts once (cure_jax.prompt_packing);
  2. computes reference log-probs (frozen initial params) and, when several optimizer updates
     share the batch, the old log-probs, micro-batch by micro-batch (no gradients);
  3. for each PPO epoch, shuffles rows into minibatches; for each minibatch accumulates exact
     gradients over its micro-batches (numerator / minibatch denominator, see losses.py) and
     applies one AdamW update. With `role_updates = "separate"` this runs on the code rows,
     then on the test rows (each role its own denominator, old log-probs from before both).
Every device function is `jax.jit` with explicit in/out shardings; the state and the gradient
accumulator are donated. With one epoch and one minibatch the old log-probs are the current
ones (`stop_gradient(logp)`), which is exact and saves a forward pass.
"""
from __future__ import annotations

import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cure_jax import losses, prompt_packing, row_plan, sharding
from cure_jax.config import LearnerConfig
from cure_jax.experience import ExperienceBatch, local_rows, place
from cure_jax.models.qwen import Qwen, QwenConfig
from cure_jax.optim import learning_rate_schedule, make_optimizer
from cure_jax.row_plan import RESPONSE_POSITIONS, GlobalRows, response_positions
from rollout.contract import schema

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# On XLA:CPU, YNNPACK may take each matmul together with the elementwise ops around it instead of
# the matmul alone. On 2 cores that ran the train step 5-9% faster from hidden size 256 up
# (benchmarks/learner.py at 256 and 512) and 8-11% slower at 128 (the tiny default's size).
CPU_DOT_FUSION_MIN_HIDDEN = 256


def compiler_options(model_cfg: QwenConfig, cfg: LearnerConfig, mesh: Mesh) -> dict[str, str]:
    """XLA options of the model's programs on `mesh` (none off CPU)."""
    if (not cfg.cpu_dot_fusion or mesh.devices.flat[0].platform != "cpu"
            or model_cfg.hidden_size < CPU_DOT_FUSION_MIN_HIDDEN):
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@flax.struct.dataclass
class TrainState:
    """Everything an optimizer update changes: checkpointed as a whole."""
    step: jax.Array        # int32 scalar, optimizer updates applied so far
    params: Any            # nested dict of arrays (nnx state as a pure dict)
    opt_state: Any         # optax state, persists across RL steps
    rng: jax.Array         # uint32[2] PRNG key of the run


def _path_key(path) -> tuple[str, ...]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
    return tuple(out)


class Learner:
    """Owns the model graph, the mesh, the shardings and the jitted device functions."""

    def __init__(self, model_cfg: QwenConfig, cfg: LearnerConfig, mesh: Mesh, *,
                 param_dtype: str = "float32", dtype: str = "float32", seed: int = 0):
        self.model_cfg, self.cfg, self.mesh, self.seed = model_cfg, cfg, mesh, seed
        self.param_dtype, self.dtype = DTYPES[param_dtype], DTYPES[dtype]
        self.loss_cfg = cfg.loss_config()
        self.optimizer = make_optimizer(cfg)
        self.schedule = learning_rate_schedule(cfg)
        abstract_model = nnx.eval_shape(lambda: self._build(seed))
        self.graphdef, self._abstract_state = nnx.split(abstract_model)
        self.param_shardings = nnx.to_pure_dict(sharding.state_shardings(self._abstract_state, mesh))
        self.abstract_params = nnx.to_pure_dict(self._abstract_state)
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.row_sharding = NamedSharding(mesh, P(self.batch_sharding.spec[0]))
        self.replicated = NamedSharding(mesh, P())
        abstract_opt = jax.eval_shape(self.optimizer.init, self.abstract_params)
        self.opt_shardings = self._opt_shardings(abstract_opt)
        self.state_shardings = TrainState(step=self.replicated, params=self.param_shardings,
                                          opt_state=self.opt_shardings, rng=self.replicated)
        self.ref_memory_kind = None
        if cfg.offload_reference:
            self.ref_memory_kind = "pinned_host"
        self.ref_shardings = jax.tree.map(
            lambda s: s.with_memory_kind(self.ref_memory_kind) if self.ref_memory_kind else s,
            self.param_shardings)
        self.dp_size = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
        self._compile()

    # ------------------------------------------------------------------ model plumbing
    def _build(self, seed: int) -> Qwen:
        return Qwen(self.model_cfg, rngs=nnx.Rngs(seed), param_dtype=self.param_dtype, dtype=self.dtype)

    def model(self, params: Any) -> Qwen:
        """The nnx model with `params` (a pure dict) plugged in; usable inside jit."""
        state = jax.tree.map(lambda x: x, self._abstract_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def _opt_shardings(self, abstract_opt: Any) -> Any:
        """Optimizer moments take their parameter's sharding (matched by path suffix), scalars replicate."""
        by_path = {}
        for path, sh in jax.tree_util.tree_flatten_with_path(self.param_shardings)[0]:
            by_path[_path_key(path)] = sh
        shapes = {_path_key(p): leaf.shape
                  for p, leaf in jax.tree_util.tree_flatten_with_path(self.abstract_params)[0]}

        def pick(path, leaf):
            key = _path_key(path)
            for i in range(len(key)):
                suf = key[i:]
                if suf in by_path and shapes[suf] == leaf.shape:
                    return by_path[suf]
            return self.replicated
        return jax.tree_util.tree_map_with_path(pick, abstract_opt)

    # ------------------------------------------------------------------ state
    def init_state(self) -> TrainState:
        """Random-init params (seeded) on the mesh, fresh optimizer state."""
        def init():
            params = nnx.to_pure_dict(nnx.state(self._build(self.seed)))
            return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=self.optimizer.init(params),
                              rng=jax.random.PRNGKey(self.seed))
        return jax.jit(init, out_shardings=self.state_shardings)()

    def state_from_params(self, params: Any) -> TrainState:
        """A fresh train state around given params (e.g. converted HF weights)."""
        params = jax.device_put(params, self.param_shardings)
        opt = jax.jit(self.optimizer.init, in_shardings=(self.param_shardings,),
                      out_shardings=self.opt_shardings)(params)
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated), params=params,
                          opt_state=opt, rng=jax.device_put(jax.random.PRNGKey(self.seed), self.replicated))

    def reference_params(self, params: Any) -> Any:
        """A frozen copy of `params` (optionally in pinned host memory) for the KL reference."""
        return jax.jit(lambda p: jax.tree.map(jnp.copy, p), in_shardings=(self.param_shardings,),
                       out_shardings=self.ref_shardings)(params)

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
        concrete = jax.eval_shape(lambda: TrainState(
            step=jnp.zeros((), jnp.int32), params=self.abstract_params,
            opt_state=jax.eval_shape(self.optimizer.init, self.abstract_params),
            rng=jax.random.PRNGKey(0)))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            concrete, self.state_shardings)

    # ------------------------------------------------------------------ device functions
    def _logprobs(self, params, mb: dict[str, jax.Array], entropy: bool = True):
        from cure_jax.logprobs import token_logprobs
        model = self.model(params)
        packed = {k: mb[k] for k in self._packed_keys} or None
        return token_logprobs(model, mb["tokens"], None, packed=packed, shards=self.dp_size,
                              at=mb[RESPONSE_POSITIONS], chunk_size=self.cfg.logprob_chunk,
                              return_entropy=entropy,
                              temperature=self.cfg.temperature)

    def _loss(self, params, mb, denom, self_old: bool):
        logp, entropy = self._logprobs(params, mb)
        mask = mb["loss_mask"]
        old = jax.lax.stop_gradient(logp) if self_old else mb["old_logp"]
        if self.loss_cfg.entropy_coef == 0.0:
            entropy = jax.lax.stop_gradient(entropy)
        numer, sums = losses.policy_loss_numerator(
            self.loss_cfg, logp=logp, old_logp=old, advantage=mb["advantage"], mask=mask,
            ref_logp=mb.get("ref_logp"), rollout_logp=mb.get("rollout_logp"), entropy=entropy)
        return numer / denom, sums

    def _compile(self) -> None:
        bs, rs, rep = self.batch_sharding, self.row_sharding, self.replicated
        ps = self.param_shardings
        options = self._compiler_options = compiler_options(self.model_cfg, self.cfg, self.mesh)

        def mb_shardings(keys):
            return {k: (rs if k == "advantage" else bs) for k in keys}
        self._mb_shardings = mb_shardings
        self._packed_keys = ((*prompt_packing.PACKED_KEYS, prompt_packing.INDEX_KEY)
                             if self.cfg.share_prompts else ())
        self._lp_keys = ("tokens", RESPONSE_POSITIONS, *self._packed_keys)

        # Reference and old log-probs need no entropy (the loss computes its own).
        def logprobs_fn(params, mb):
            if self.ref_memory_kind:
                params = jax.device_put(params, jax.tree.map(lambda s: s.with_memory_kind("device"), ps))
            return self._logprobs(params, mb, entropy=False)[0]
        lp_shardings = mb_shardings(self._lp_keys)
        self._logprobs_ref_jit = jax.jit(logprobs_fn, in_shardings=(self.ref_shardings, lp_shardings),
                                         out_shardings=bs, compiler_options=options)
        self._logprobs_jit = jax.jit(lambda p, mb: self._logprobs(p, mb, entropy=False)[0],
                                     in_shardings=(ps, lp_shardings), out_shardings=bs,
                                     compiler_options=options)
        self._accum_cache: dict[Any, Any] = {}

        def apply_fn(state: TrainState, grads):
            grad_norm = optax.global_norm(grads)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            lr = self.schedule(state.step)
            return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
                    {"grad_norm": grad_norm, "lr": jnp.asarray(lr, jnp.float32)})
        self._apply_jit = jax.jit(apply_fn, in_shardings=(self.state_shardings, ps),
                                  out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        self._zeros_jit = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p), in_shardings=(ps,),
                                  out_shardings=ps)

    def _accum_fn(self, keys: tuple[str, ...], self_old: bool):
        key = (keys, self_old)
        if key not in self._accum_cache:
            ps, rep = self.param_shardings, self.replicated

            def accum(params, acc, metric_acc, mb, denom):
                (_, sums), grads = jax.value_and_grad(self._loss, has_aux=True)(params, mb, denom, self_old)
                acc = jax.tree.map(jnp.add, acc, grads)
                metric_acc = {k: metric_acc[k] + sums[k] for k in metric_acc}
                return acc, metric_acc
            self._accum_cache[key] = jax.jit(
                accum, in_shardings=(ps, ps, rep, self._mb_shardings(keys), rep),
                out_shardings=(ps, rep), donate_argnums=(1, 2),
                compiler_options=self._compiler_options)
        return self._accum_cache[key]

    # ------------------------------------------------------------------ host orchestration
    def _plan(self, rows: GlobalRows, ids: np.ndarray) -> list[row_plan.MicroBatch]:
        """Micro-batches over the global row ids `ids` (see cure_jax.row_plan)."""
        return row_plan.plan(rows, ids, self.cfg.micro_batch_size, self._local_dp,
                             self.cfg.length_bucket, self.cfg.share_prompts)

    @property
    def _local_dp(self) -> int:
        return self.dp_size // jax.process_count()

    def _device_mb(self, batch: ExperienceBatch, rows: GlobalRows, mb: row_plan.MicroBatch,
                   keys: tuple[str, ...], extra: dict[str, np.ndarray]
                   ) -> tuple[dict[str, jax.Array], int]:
        """This process's rows of one micro-batch, padded and trimmed to the micro-batch's shape
        (and packed by prompt with `share_prompts`), placed as its block of the global
        micro-batch; also returns the tokens the model runs on."""
        sub = batch.select(mb.local_rows).pad_rows_to(mb.rows_per_process).with_length(mb.length)
        length = mb.length
        d = {"tokens": sub.tokens, "loss_mask": sub.response_mask(), "advantage": sub.advantage,
             "rollout_logp": sub.rollout_logprobs,
             RESPONSE_POSITIONS: response_positions(sub.prompt_len, sub.response_len, mb.window,
                                                    length)}
        fed = sub.tokens.size
        packed = {}
        if self._packed_keys:
            pi = rows.process_index
            group = np.full(mb.rows_per_process, -1, np.int64)
            group[:len(mb.local_rows)] = rows.group[rows.offsets[pi] + mb.local_rows]
            arrays = prompt_packing.pack(sub.tokens, sub.prompt_len, sub.response_len, group,
                                         self._local_dp, mb.packed_seqs, mb.packed_len).arrays()
            d[prompt_packing.INDEX_KEY] = arrays.pop(prompt_packing.INDEX_KEY)
            packed = place(arrays, self.batch_sharding,
                           self._local_dp * mb.packed_seqs * jax.process_count())
            fed = arrays["packed_tokens"].size
        for k, v in extra.items():
            vv = np.zeros((mb.rows_per_process, length), v.dtype)
            w = min(length, v.shape[1])
            vv[:len(mb.local_rows), :w] = v[mb.local_rows, :w]
            d[k] = vv
        n = mb.rows_per_process * jax.process_count()
        dev = place({k: d[k] for k in keys if k not in packed}, self.batch_sharding, n)
        return {**dev, **packed}, fed

    def _fill_logprobs(self, fn, params, batch: ExperienceBatch, rows: GlobalRows) -> np.ndarray:
        """Per-token log-probs [n, L] of this process's rows under `params`, micro-batch by
        micro-batch (every process runs the same micro-batches)."""
        out = np.zeros((batch.num_rows, batch.length), np.float32)
        for mb in self._plan(rows, np.arange(rows.num_rows)):
            dev, _ = self._device_mb(batch, rows, mb, self._lp_keys, {})
            with jax.set_mesh(self.mesh):
                logp = fn(params, dev)
            logp = local_rows(logp)[:len(mb.local_rows)]
            w = min(logp.shape[1], batch.length)
            out[mb.local_rows, :w] = logp[:, :w]
        return out

    def _minibatch_grads(self, params, batch: ExperienceBatch, rows: GlobalRows, ids: np.ndarray,
                         extra: dict[str, np.ndarray], keys: tuple[str, ...], accum):
        """Exact gradient of the loss of the minibatch of global rows `ids`, accumulated over its
        micro-batches; the denominator counts every process's rows.

        Returns (grads, metric sums, response-token count, padded tokens this process fed)."""
        mask = rows.response_mask(ids)
        denom = float(np.asarray(losses.aggregate_denominator(mask, self.loss_cfg.agg_mode)))
        ntok = max(float(mask.sum()), 1.0)
        acc = self._zeros_jit(params)
        macc = {k: jnp.zeros((), jnp.float32) for k in losses.METRIC_KEYS}
        processed = 0
        for mb in self._plan(rows, ids):
            dev, fed = self._device_mb(batch, rows, mb, keys, extra)
            processed += fed
            with jax.set_mesh(self.mesh):
                acc, macc = accum(params, acc, macc, dev, jnp.float32(denom))
        return acc, macc, ntok, processed

    def _prepare(self, params, batch: ExperienceBatch, rows: GlobalRows, ref_params: Any | None,
                 n_updates: int):
        """Reference/old log-probs the loss needs, the micro-batch keys and the jitted accumulator."""
        names, keys, self_old = self._loss_inputs(n_updates)
        extra: dict[str, np.ndarray] = {}
        if "ref_logp" in names:
            if ref_params is None:
                raise ValueError("kl_coef > 0 needs ref_params (the frozen reference policy)")
            extra["ref_logp"] = self._fill_logprobs(self._logprobs_ref_jit, ref_params, batch, rows)
        if "old_logp" in names:
            extra["old_logp"] = (batch.rollout_logprobs if self.cfg.old_logprobs == "rollout" else
                                 self._fill_logprobs(self._logprobs_jit, params, batch, rows))
        return extra, keys, self._accum_fn(keys, self_old)

    def _loss_inputs(self, n_updates: int) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """The per-token inputs the loss needs besides the batch (ref_logp, old_logp), every
        micro-batch key, and whether the old log-probs are the current ones (one update)."""
        names = ("ref_logp",) if self.loss_cfg.kl_coef > 0 else ()
        self_old = self.cfg.old_logprobs != "rollout" and n_updates == 1
        if not self_old:
            names += ("old_logp",)
        keys = tuple(sorted([*self._lp_keys, "loss_mask", "advantage"]
                            + (["rollout_logp"] if self.loss_cfg.tis_cap else []) + list(names)))
        return names, keys, self_old

    def gradients(self, params: Any, batch: ExperienceBatch, ref_params: Any | None = None
                  ) -> tuple[Any, dict[str, float]]:
        """Gradient of the loss of the whole batch taken as one minibatch (no update), and
        its token-mean metrics; accumulated over micro-batches exactly as `update` does."""
        rows = row_plan.gather_rows(batch)
        extra, keys, accum = self._prepare(params, batch, rows, ref_params, 1)
        acc, macc, ntok, _ = self._minibatch_grads(params, batch, rows, np.arange(rows.num_rows),
                                                   extra, keys, accum)
        grads = jax.tree.map(np.asarray, jax.device_get(acc))
        return grads, {k: float(v) / ntok for k, v in jax.device_get(macc).items()}

    def _role_groups(self, rows: GlobalRows) -> list[np.ndarray]:
        """Global row ids trained together: all rows (joint), or the codes' then the tests'
        (separate; a role without rows is skipped)."""
        if self.cfg.role_updates == "joint":
            return [np.arange(rows.num_rows)]
        groups = [np.nonzero(rows.kind == k)[0] for k in (schema.KIND_CODE, schema.KIND_TEST)]
        return [g for g in groups if g.size]

    def update(self, state: TrainState, batch: ExperienceBatch, ref_params: Any | None = None,
               ) -> tuple[TrainState, dict[str, float]]:
        """All PPO epochs/minibatches of one experience batch, of both roles together or of
        the codes then the tests (`role_updates`). Returns (new state, metrics averaged over
        the optimizer steps).

        `batch` holds this process's rows; with several processes the update is over the
        union of every process's rows (global row ids: process 0's rows first), and every
        process must call it, also with an empty batch."""
        cfg = self.cfg
        t0 = time.perf_counter()
        rows = row_plan.gather_rows(batch)
        groups = self._role_groups(rows)
        n_updates = cfg.ppo_epochs * cfg.minibatches * len(groups)
        extra, keys, accum = self._prepare(state.params, batch, rows, ref_params, n_updates)
        t_prep = time.perf_counter() - t0
        seed_words = [int(x) for x in np.asarray(jax.device_get(state.rng)).ravel()]
        step0 = int(jax.device_get(state.step))
        perm_rng = np.random.default_rng(seed_words + [step0])
        totals: dict[str, float] = {k: 0.0 for k in losses.METRIC_KEYS}
        totals.update(grad_norm=0.0, lr=0.0)
        tokens_processed = 0
        for ids in groups:
            for _ in range(cfg.ppo_epochs):
                perm = ids[perm_rng.permutation(len(ids))] if n_updates > 1 else ids
                for mbatch_rows in np.array_split(perm, cfg.minibatches):
                    acc, macc, ntok, ptok = self._minibatch_grads(state.params, batch, rows,
                                                                  mbatch_rows, extra, keys, accum)
                    tokens_processed += ptok
                    with jax.set_mesh(self.mesh):
                        state, upd = self._apply_jit(state, acc)
                    got = jax.device_get((macc, upd))
                    for k, v in got[0].items():
                        totals[k] += float(v) / ntok / n_updates
                    totals["grad_norm"] += float(got[1]["grad_norm"]) / n_updates
                    totals["lr"] += float(got[1]["lr"]) / n_updates
        t_total = time.perf_counter() - t0
        totals.update({"time/prep_s": t_prep, "time/update_s": t_total - t_prep,
                       "perf/tokens_per_s": tokens_processed * 1.0 / max(t_total - t_prep, 1e-9),
                       "perf/padded_tokens": float(tokens_processed),
                       "perf/response_tokens": float(rows.response_len.sum()) * cfg.ppo_epochs})
        return state, totals

    def step_programs(self, batch: ExperienceBatch) -> dict[str, jax.stages.Lowered]:
        """The device programs an `update` of `batch` runs, lowered (not run) on abstract
        params and optimizer state for its largest micro-batch: what `cure-train --dry_run`
        compiles to plan memory. Keys: "accumulate gradients", "optimizer update" and, when
        the loss needs them, "reference log-probs" and "old log-probs"."""
        rows = row_plan.gather_rows(batch)
        groups = self._role_groups(rows)
        n_updates = self.cfg.ppo_epochs * self.cfg.minibatches * len(groups)
        names, keys, self_old = self._loss_inputs(n_updates)
        role = max(groups, key=len)
        minibatch = role[:-(-len(role) // self.cfg.minibatches)]
        mb = max(self._plan(rows, minibatch), key=lambda m: (m.rows_per_process * m.length,
                                                           m.packed_seqs * m.packed_len))
        extra = {k: np.zeros((batch.num_rows, batch.length), np.float32) for k in names}
        train_mb, _ = self._device_mb(batch, rows, mb, keys, extra)
        lp_mb = {k: train_mb[k] for k in self._lp_keys}
        state = self.abstract_state()
        metrics = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=self.replicated)
                   for k in losses.METRIC_KEYS}
        with jax.set_mesh(self.mesh):
            out = {"accumulate gradients": self._accum_fn(keys, self_old).lower(
                       state.params, state.params, metrics, train_mb, jnp.float32(1.0)),
                   "optimizer update": self._apply_jit.lower(state, state.params)}
            if "ref_logp" in names:
                ref = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                   state.params, self.ref_shardings)
                out["reference log-probs"] = self._logprobs_ref_jit.lower(ref, lp_mb)
            if "old_logp" in names and self.cfg.old_logprobs != "rollout":
                out["old log-probs"] = self._logprobs_jit.lower(state.params, lp_mb)
        return out

    def logprobs(self, params: Any, batch: ExperienceBatch) -> np.ndarray:
        """Host helper: [n, L] log-probs of the response tokens of this process's rows of
        `batch` under `params`, 0 elsewhere (row order kept; a collective when multi-process)."""
        return self._fill_logprobs(self._logprobs_jit, params, batch, row_plan.gather_rows(batch))


def make_learner(model_cfg: QwenConfig, cfg: LearnerConfig, mesh: Mesh, **kw) -> Learner:
    """The policy-gradient learner; keyword arguments as for `Learner`."""
    return Learner(model_cfg, cfg, mesh, **kw)
