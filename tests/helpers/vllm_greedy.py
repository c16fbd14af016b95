"""Greedy-generate with the real vLLM CPU engine in its own process; print token ids as JSON.

    python tests/helpers/vllm_greedy.py MODEL_DIR '[[1, 2, 3], [4, 5]]' MAX_TOKENS

Runs vLLM in-process mode (VLLM_ENABLE_V1_MULTIPROCESSING=0, uni executor, eager), float32.
The last stdout line is {"tokens": [[...], ...]}.
"""
import json
import os
import sys


def main() -> None:
    model_dir, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True,
              distributed_executor_backend="uni", max_model_len=128, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    print(json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outs]}))


if __name__ == "__main__":
    main()
