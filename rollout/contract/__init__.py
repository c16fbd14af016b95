"""The contract between the rollout side (torch/vLLM) and the learner (JAX).

Everything that crosses a process boundary between the two is defined here, once: the
experience schema (:mod:`.schema`), the shared-memory ring buffer that carries experience
(:mod:`.ring_buffer`), the weight channel that carries parameters (:mod:`.weight_channel`),
segment naming and clean-up (:mod:`.segments`, :mod:`.janitor`), the JSON-lines control
protocol and its client (:mod:`.control`), the process helpers both sides use
(:mod:`.procs`), the typed config sections both processes read and their builder
(:mod:`.sections`, :mod:`.config`), and the command-line error convention (:mod:`.cli`). The idea is verl's ``protocol.py``: one checked schema across every process
boundary, so neither side re-derives what the other writes.

This subpackage is the only part of ``rollout`` that ``cure_jax`` imports, so it depends on
numpy and the standard library only. This file imports nothing: import the module you need.
"""
