"""The synthetic task kinds: statement, reference program, plausible wrong programs, inputs.

Every kind is a family indexed by one parameter (an integer ``k`` or letters) that appears both
in the statement and in the program, so a held-out parameter value is a problem whose text the
policy has never seen: solving it needs reading the statement, not recalling an answer.

Inputs are small (lists of at most 6 numbers below 30, words of at most 8 letters), so a tiny
model can write a correct test by hand-calculation-sized reasoning. Outputs are never written
here: :mod:`rollout.tiny_tasks.generate` runs the reference program on each input.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

__all__ = ["KINDS", "TaskKind", "kind_by_name"]

Param = int | str


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """One task family.

    params: every parameter value of the family (the split partitions these).
    statement / solution: the problem text and the reference program for a parameter.
    mutants: plausible wrong programs (off-by-one, wrong operator, wrong builtin, ...); the
      generator keeps only those that fail at least one ground-truth test of the instance.
    gen_input: one random stdin (ends with a newline) for a parameter.
    """

    name: str
    params: tuple[Param, ...]
    statement: Callable[[Param], str]
    solution: Callable[[Param], str]
    mutants: Callable[[Param], list[str]]
    gen_input: Callable[[random.Random, Param], str]

    def __post_init__(self) -> None:
        if not self.params or len(set(self.params)) != len(self.params):
            raise ValueError(f"task kind {self.name!r}: params must be non-empty and distinct")


_LIST_FMT = ("The first line holds an integer n (1 <= n <= 6). The second line holds n integers "
             "between 0 and 29, separated by spaces.")
_READ_LIST = "n = int(input())\na = list(map(int, input().split()))\n"
_WORD_FMT = "The input is one line with a word of lowercase letters (1 to 8 letters)."
_INTS = tuple(range(2, 30))
_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")


def _list_input(rng: random.Random, min_n: int = 1) -> str:
    n = rng.randint(min_n, 6)
    return f"{n}\n{' '.join(str(rng.randint(0, 29)) for _ in range(n))}\n"


def _word(rng: random.Random, must: str = "", min_len: int = 1) -> str:
    n = rng.randint(min_len, 8)
    letters = [rng.choice("abcdefgh" + must * 3) for _ in range(n)]
    return "".join(letters)


def _int_input(lo: int, hi: int) -> Callable[[random.Random, Param], str]:
    return lambda rng, k: f"{rng.randint(lo, hi)}\n"


def _prog(param_line: str, body: str) -> Callable[[Param], str]:
    """Programs state the parameter once, on their first line, then use the name."""
    return lambda k: param_line.format(k=k) + body


def _progs(param_line: str, *bodies: str) -> Callable[[Param], list[str]]:
    return lambda k: [param_line.format(k=k) + b for b in bodies]


_K = "k = {k}\n"
_C = 'c = "{k}"\n'
_AB = 'old, new = "{k[0]}", "{k[1]}"\n'
_READ_WORD = "s = input().strip()\n"
_READ_X = "x = int(input())\n"
_READ_N = "n = int(input())\n"


def _count_greater_input(rng: random.Random, k: Param) -> str:
    n = rng.randint(1, 6)
    values = (rng.choice([k, k + 1, max(0, k - 1), rng.randint(0, 29)]) for _ in range(n))
    return f"{n}\n{' '.join(map(str, values))}\n"


def _smallest_input(rng: random.Random, k: Param) -> str:
    n = rng.randint(k + 1, 6)
    return f"{n}\n{' '.join(str(rng.randint(0, 29)) for _ in range(n))}\n"


KINDS: tuple[TaskKind, ...] = (
    TaskKind(
        "sum_plus", _INTS,
        lambda k: f"{_LIST_FMT} Print the sum of the n integers plus {k}.",
        _prog(_K, _READ_LIST + "print(sum(a) + k)\n"),
        _progs(_K, _READ_LIST + "print(sum(a) + k + 1)\n", _READ_LIST + "print(sum(a) - k)\n",
               _READ_LIST + "print(sum(a[1:]) + k)\n"),
        lambda rng, k: _list_input(rng)),
    TaskKind(
        "max_times", _INTS,
        lambda k: f"{_LIST_FMT} Print the largest of the n integers multiplied by {k}.",
        _prog(_K, _READ_LIST + "print(max(a) * k)\n"),
        _progs(_K, _READ_LIST + "print(min(a) * k)\n", _READ_LIST + "print(max(a) + k)\n",
               _READ_LIST + "print(max(a) * (k - 1))\n"),
        lambda rng, k: _list_input(rng)),
    TaskKind(
        "min_minus", _INTS,
        lambda k: f"{_LIST_FMT} Print the smallest of the n integers minus {k}.",
        _prog(_K, _READ_LIST + "print(min(a) - k)\n"),
        _progs(_K, _READ_LIST + "print(max(a) - k)\n", _READ_LIST + "print(min(a) + k)\n",
               _READ_LIST + "print(min(a) - k + 1)\n"),
        lambda rng, k: _list_input(rng)),
    TaskKind(
        "count_greater", _INTS,
        lambda k: f"{_LIST_FMT} Print how many of the n integers are greater than {k}.",
        _prog(_K, _READ_LIST + "print(sum(1 for x in a if x > k))\n"),
        _progs(_K, _READ_LIST + "print(sum(1 for x in a if x >= k))\n",
               _READ_LIST + "print(sum(1 for x in a if x < k))\n",
               _READ_LIST + "print(sum(1 for x in a if x > k + 1))\n"),
        _count_greater_input),
    TaskKind(
        "count_divisible", tuple(range(2, 10)),
        lambda k: f"{_LIST_FMT} Print how many of the n integers are divisible by {k}.",
        _prog(_K, _READ_LIST + "print(sum(1 for x in a if x % k == 0))\n"),
        _progs(_K, _READ_LIST + "print(sum(1 for x in a if x % k != 0))\n",
               _READ_LIST + "print(sum(1 for x in a if x % (k + 1) == 0))\n",
               _READ_LIST + "print(sum(1 for x in a if x // k == 0))\n"),
        lambda rng, k: _list_input(rng)),
    TaskKind(
        "reverse_add", _INTS,
        lambda k: (f"{_LIST_FMT} Print the n integers in reverse order, each increased by {k}, "
                   "on one line separated by spaces."),
        _prog(_K, _READ_LIST + "print(*[x + k for x in reversed(a)])\n"),
        _progs(_K, _READ_LIST + "print(*[x + k for x in a])\n",
               _READ_LIST + "print(*[x - k for x in reversed(a)])\n",
               _READ_LIST + "print(*[x + k for x in reversed(a[1:])])\n"),
        lambda rng, k: _list_input(rng, min_n=2)),
    TaskKind(
        "smallest_k", (1, 2, 3, 4),
        lambda k: (f"The first line holds an integer n ({k} <= n <= 6). The second line holds n "
                   "integers between 0 and 29, separated by spaces. Print the "
                   f"{k} smallest of them in increasing order, on one line separated by spaces."),
        _prog(_K, _READ_LIST + "print(*sorted(a)[:k])\n"),
        _progs(_K, _READ_LIST + "print(*sorted(a)[-k:])\n", _READ_LIST + "print(*a[:k])\n",
               _READ_LIST + "print(*sorted(a)[:k + 1])\n"),
        _smallest_input),
    TaskKind(
        "divisible_yes_no", _INTS,
        lambda k: (f"The input is one integer x (0 <= x <= 200). Print YES if x is divisible by "
                   f"{k}, otherwise print NO."),
        _prog(_K, _READ_X + 'print("YES" if x % k == 0 else "NO")\n'),
        _progs(_K, _READ_X + 'print("NO" if x % k == 0 else "YES")\n',
               _READ_X + 'print("YES" if x % (k + 1) == 0 else "NO")\n',
               _READ_X + 'print("YES" if x // k == 0 else "NO")\n'),
        lambda rng, k: f"{rng.choice([k * rng.randint(0, 200 // k), rng.randint(0, 200)])}\n"),
    TaskKind(
        "repeat_word", tuple(range(2, 6)),
        lambda k: f"{_WORD_FMT} Print the word repeated {k} times, with no spaces.",
        _prog(_K, _READ_WORD + "print(s * k)\n"),
        _progs(_K, _READ_WORD + "print(s * (k + 1))\n", _READ_WORD + "print(s[::-1] * k)\n",
               _READ_WORD + "print(s + str(k))\n"),
        lambda rng, k: f"{_word(rng, min_len=2)}\n"),
    TaskKind(
        "word_prefix", tuple(range(1, 8)),
        lambda k: (f"{_WORD_FMT} Print the first {k} letters of the word (the whole word if it is "
                   f"shorter than {k})."),
        _prog(_K, _READ_WORD + "print(s[:k])\n"),
        _progs(_K, _READ_WORD + "print(s[:k + 1])\n", _READ_WORD + "print(s[k:])\n",
               _READ_WORD + "print(s[-k:])\n"),
        lambda rng, k: f"{_word(rng, min_len=max(1, k - 1))}\n"),
    TaskKind(
        "count_letter", _LETTERS,
        lambda c: f"{_WORD_FMT} Print how many times the letter {c} appears in the word.",
        _prog(_C, _READ_WORD + "print(s.count(c))\n"),
        _progs(_C, _READ_WORD + "print(s.count(c) + 1)\n", _READ_WORD + "print(len(s))\n",
               _READ_WORD + "print(len(s) - s.count(c))\n"),
        lambda rng, c: f"{_word(rng, must=c)}\n"),
    TaskKind(
        "replace_letter", tuple(a + b for a in "abcdefgh" for b in "xyz"),
        lambda p: (f"{_WORD_FMT} Replace every letter {p[0]} of the word by the letter {p[1]} and "
                   "print the result."),
        _prog(_AB, _READ_WORD + "print(s.replace(old, new))\n"),
        _progs(_AB, _READ_WORD + "print(s.replace(new, old))\n",
               _READ_WORD + "print(s.replace(old, new, 1))\n",
               _READ_WORD + 'print(s.replace(old, ""))\n'),
        lambda rng, p: f"{_word(rng, must=p[0])}\n"),
    TaskKind(
        "multiples", _INTS,
        lambda k: (f"The input is one integer n (1 <= n <= 6). Print the first n positive "
                   f"multiples of {k}, one per line, in increasing order."),
        _prog(_K, _READ_N + "for i in range(1, n + 1):\n    print(i * k)\n"),
        _progs(_K, _READ_N + "for i in range(n):\n    print(i * k)\n",
               _READ_N + "for i in range(1, n):\n    print(i * k)\n",
               _READ_N + "for i in range(1, n + 1):\n    print(i + k)\n"),
        _int_input(1, 6)),
    TaskKind(
        "sum_from", tuple(range(1, 10)),
        lambda k: (f"The input is one integer n ({k} <= n <= 20). Print the sum of all integers "
                   f"from {k} to n, both included."),
        _prog(_K, _READ_N + "total = 0\nfor i in range(k, n + 1):\n    total += i\nprint(total)\n"),
        _progs(_K, _READ_N + "total = 0\nfor i in range(k, n):\n    total += i\nprint(total)\n",
               _READ_N + "total = 0\nfor i in range(k, n + 1):\n    total += 1\nprint(total)\n",
               _READ_N + "total = 0\nfor i in range(k + 1, n + 1):\n    total += i\nprint(total)\n"),
        lambda rng, k: f"{rng.randint(k, 20)}\n"),
)

_BY_NAME = {k.name: k for k in KINDS}
assert len(_BY_NAME) == len(KINDS), "duplicate task kind names"


def kind_by_name(name: str) -> TaskKind:
    """The kind called ``name``; a one-line error lists the known kinds."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(_BY_NAME)}") from None
