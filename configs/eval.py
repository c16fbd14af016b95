"""cure-eval: one-shot coding, unit-test generation and best-of-N evaluation (the paper's table).

    cure-eval --config=configs/eval.py --config.model=/path/to/hf_or_orbax_dir \
        --config.dataset=LiveBench,MBPP --config.out_dir=runs/eval-7b
    # a hosted model (key from $OPENAI_API_KEY, or api.key):
    cure-eval --config=configs/eval.py --config.engine=api --config.api.model=gpt-4o-mini \
        --config.api.rpm=500
    # a hosted coder with our tester:
    cure-eval --config=configs/eval.py --config.engine=api --config.api.model=gpt-4o-mini \
        --config.tester.engine=vllm --config.tester.model=/path/to/ReasonFlux-Coder-4B

Re-running the same command resumes from <out_dir>/samples.jsonl. ``bon`` is a list of (n, m)
pairs: ``--config.bon="((4,4),(16,16))"``.

``protocol`` decides what the numbers mean (rollout/contract/protocol.py); it fills every field
marked "protocol" below that is left unset, and a field set on the command line wins:

  paper (the reference's evaluation; the default, through "auto", for LiveBench, MBPP,
      LiveCodeBench, CodeContests, CodeForces): sandbox.max_gt_tests=8 (the first 8
      ground-truth tests), drop_unparsed_tests=True (an unparsed generated test counts neither
      in the unit-test accuracy nor in the BoN test prefix; a problem without a parsed test is
      not scored), bon = (4,4) plus the project's pairs, sampling temperature 0.8, top_p 0.95,
      top_k 40, max_tokens 10000, prompts.mode="reference" (the reference's raw prompt format);
  project (the default for other data, e.g. embedded:eval): sandbox.max_gt_tests=0 (all),
      drop_unparsed_tests=False (every sampled test counts; an unparsed one is inaccurate),
      bon = (1,16) (4,16) (8,16) (16,16) (16,1) (16,4) (16,8), temperature 0.8, top_p 0.95,
      top_k 40, max_tokens 4096, prompts.mode="auto" (the chat template when there is one).

metrics.json always carries both unit-test accuracies (unit_test_accuracy_all_tests and
unit_test_accuracy_parsed_tests; unit_test_accuracy is the protocol's), the accumulate
accuracies and the mean response lengths in tokens.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to evaluate on: comma-separated; each a hub name (LiveBench, MBPP, LiveCodeBench,
    # CodeContests, CodeForces: read from data_dir, downloaded when missing), a .json/.jsonl
    # file or directory, or embedded:eval / embedded:train.
    c.dataset = "embedded:eval"
    c.data_dir = "data"
    c.max_problems = 0  # 0: all problems
    c.out_dir = "runs/eval"

    # The coder (and the tester unless tester.engine is set).
    c.engine = "vllm"  # "vllm" | "hf" | "api"
    c.model = ""  # HF directory, or an Orbax checkpoint from cure-train (converted on the fly)
    c.tokenizer = ""  # default: the model's own
    c.base_model = ""  # for an Orbax training checkpoint: the HF dir it started from (config, tokenizer)
    c.engine_options = ml_collections.ConfigDict({
        "tensor_parallel_size": 1,  # vllm: GPUs per engine
        "data_parallel_size": 1,  # vllm: engines (GPU groups) sharing the prompts
        "gpu_memory_utilization": 0.85,
        "max_model_len": 0,  # 0: the model's own
        "dtype": "auto",
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "in_process": False,  # vllm: run the model in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
        "distributed_executor_backend": "",  # vllm: "" (its choice) | "uni" | "mp" | "ray"
        "kv_cache_gb": 0.0,  # vllm CPU build: KV cache size; 0: the default
        "device": "auto",  # hf: "auto" | "cpu" | "cuda" | "cuda:1"
    })
    c.api = ml_collections.ConfigDict({
        "base_url": "https://api.openai.com/v1",
        "model": "",
        "key": "",  # prefer key_env: a key in a config file ends up in shell history
        "key_env": "OPENAI_API_KEY",
        "rpm": 0.0,  # requests per minute, 0: no limit
        "max_concurrency": 8,
        "max_retries": 6,
        "timeout_s": 300.0,
        "send_top_k": False,  # vLLM's server accepts top_k; OpenAI rejects it
        # "chat": /chat/completions with chat messages; "completions": /completions with the
        # prompt string of prompts.mode ("raw" or "reference"), for models without a chat
        # template (e.g. the tiny coder behind vLLM's own OpenAI-compatible server)
        "endpoint": "chat",
    })
    # A separate tester model; engine "" means the coder also writes the tests. Empty api.*
    # fields inherit from the coder's api section (except model).
    c.tester = ml_collections.ConfigDict({
        "engine": "",
        "model": "",
        "tokenizer": "",
        "base_model": "",
        "api": ml_collections.ConfigDict({"base_url": "", "model": "", "key": "", "key_env": "", "rpm": 0.0}),
    })

    c.protocol = "auto"  # "auto" | "paper" | "project" (see the module docstring)
    c.k_code = 16
    c.k_case = 16
    c.bon = config_dict.placeholder(tuple)  # protocol; e.g. ((4, 4), (16, 16))
    c.drop_unparsed_tests = config_dict.placeholder(bool)  # protocol
    c.single_eval = False  # code only: no tests sampled, code accuracy (and BoN(n, 0) if given)
    c.sampling = ml_collections.ConfigDict({  # unset fields: the protocol's
        "temperature": config_dict.placeholder(float), "top_p": config_dict.placeholder(float),
        "top_k": config_dict.placeholder(int), "max_tokens": config_dict.placeholder(int),
        "seed": 0})
    c.prompts = ml_collections.ConfigDict({
        # protocol; "auto" | "chat" | "raw" | "reference" (the API always gets chat messages:
        # in "reference" mode the reference's whole prompt is the user message, as it sends it)
        "mode": config_dict.placeholder(str),
        "code_template": "", "test_template": "", "raw_template": "",  # your own Jinja files
        "repair_template": "",  # the refinement rounds' repair prompt (rollout/templates/*repair*)
        "system_prompt": "",
        "show_example_in_test_prompt": False,  # the paper's evaluation shows none
    })
    # Agentic coding after BoN (rollout/refine.py): rounds > 0 asks the coder to repair each
    # problem's BoN pick, shown the generated tests it fails (never the ground truth), k
    # candidates per request; metrics.json gains "refine" (accuracy after rounds 0..R).
    c.refine = ml_collections.ConfigDict({
        "rounds": 0,  # 0: off
        "k": 4,  # candidates per repair request
        "failing_tests": 1,  # failing generated tests shown per request
        "max_chars": 1000,  # each shown text (input, expected/actual output, error) cut to this
    })
    c.sandbox = ml_collections.ConfigDict({
        "workers": 0,  # 0: one per CPU
        "isolation": "auto",
        "time_multiplier": 1.0,
        "memory_mb": 1024,
        "max_gt_tests": config_dict.placeholder(int),  # protocol; 0: every ground-truth test
    })
    c.gen_batch = 64  # prompts per local engine call / API samples per fsync
    c.exec_batch = 8  # problems per sandbox call
    c.progress = True
    c.tensorboard_dir = ""  # also write the metrics as TensorBoard scalars here
    c.tensorboard_step = 0  # ... at this step (e.g. the checkpoint's training step)
    return c
