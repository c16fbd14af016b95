"""Write the synthetic task splits as Stdio-format JSON files (what ``data.train`` / ``data.eval``
of a config can point at):

    python -m rollout.tiny_tasks --out=runs/tasks      # -> runs/tasks/train.json, runs/tasks/eval.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from rollout.problems import write_problems
from rollout.tiny_tasks.generate import SPLITS, task_problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write the synthetic task splits as JSON")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        problems = task_problems(split, seed=args.seed)
        write_problems(problems, out / f"{split}.json")
        print(f"{out / f'{split}.json'}: {len(problems)} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
