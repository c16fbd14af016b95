"""Specifications of the embedded problems: statement, reference solution and test inputs.

Expected outputs are not written here: ``generate.py`` runs each reference solution on
each input and stores what it prints, so the shipped outputs are right by construction.
Every statement fixes the exact input and output format. Inputs end with a newline.
"""
from __future__ import annotations

import dataclasses
import random
import textwrap


@dataclasses.dataclass(frozen=True)
class Spec:
    """One embedded problem before its outputs are computed."""

    task_id: str
    difficulty: str
    question: str
    solution: str
    public: tuple[str, ...]
    private: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.public) <= 2:
            raise ValueError(f"{self.task_id}: needs 1-2 public tests, has {len(self.public)}")
        if len(self.private) < 5:
            raise ValueError(f"{self.task_id}: needs >= 5 private tests, has {len(self.private)}")
        for inp in self.public + self.private:
            if not inp.endswith("\n"):
                raise ValueError(f"{self.task_id}: test input {inp!r} must end with a newline")
        if len(set(self.public + self.private)) != len(self.public + self.private):
            raise ValueError(f"{self.task_id}: duplicate test inputs")


def _spec(task_id: str, difficulty: str, question: str, solution: str,
          public: list[str], private: list[str]) -> Spec:
    return Spec(task_id, difficulty, textwrap.dedent(question).strip() + "\n",
                textwrap.dedent(solution).strip() + "\n", tuple(public), tuple(private))


def _ints(values) -> str:
    return " ".join(str(v) for v in values)


def _list_input(values) -> str:
    """The common "n, then n integers on one line" input."""
    values = list(values)
    return f"{len(values)}\n{_ints(values)}\n"


_rng = random.Random(20250603)


def _rand_list(n: int, lo: int, hi: int) -> list[int]:
    return [_rng.randint(lo, hi) for _ in range(n)]


def _rand_word(n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


# ------------------------------------------------------------------------------------
# train split
# ------------------------------------------------------------------------------------

TRAIN: list[Spec] = [
    _spec("sum_of_list", "easy", """
        Compute the sum of a list of integers.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers a_1 ... a_n (-10^9 <= a_i <= 10^9) separated by single spaces.

        Output
        Print one integer: a_1 + a_2 + ... + a_n.
        """, """
        n = int(input())
        a = list(map(int, input().split()))
        print(sum(a[:n]))
        """,
        ["5\n1 2 3 4 5\n"],
        ["1\n0\n", "1\n-7\n", "3\n1000000000 1000000000 1000000000\n", "4\n-5 5 -5 5\n",
         _list_input(_rand_list(200, -10**9, 10**9)), "2\n-1000000000 -1000000000\n"]),

    _spec("max_of_list", "easy", """
        Find the largest number in a list of integers.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers a_1 ... a_n (-10^9 <= a_i <= 10^9) separated by single spaces.

        Output
        Print one integer: the maximum of the a_i.
        """, """
        n = int(input())
        a = list(map(int, input().split()))
        print(max(a[:n]))
        """,
        ["4\n3 9 2 7\n"],
        ["1\n-4\n", "3\n-3 -1 -2\n", "5\n7 7 7 7 7\n", "2\n1000000000 -1000000000\n",
         _list_input(_rand_list(300, -10**9, 10**9)), "3\n0 -1 0\n"]),

    _spec("count_even", "easy", """
        Count how many numbers in a list are even.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers a_1 ... a_n (-10^9 <= a_i <= 10^9) separated by single spaces.

        Output
        Print one integer: the number of indices i with a_i even (0 and negative even
        numbers count as even).
        """, """
        n = int(input())
        a = list(map(int, input().split()))
        print(sum(1 for x in a[:n] if x % 2 == 0))
        """,
        ["5\n1 2 3 4 6\n"],
        ["1\n0\n", "1\n7\n", "4\n-2 -3 -4 -5\n", "3\n1 3 5\n",
         _list_input(_rand_list(150, -1000, 1000))]),

    _spec("reverse_string", "easy", """
        Reverse a word.

        Input
        One line with a string s of 1 to 1000 lowercase English letters.

        Output
        Print s written backwards.
        """, """
        s = input().strip()
        print(s[::-1])
        """,
        ["hello\n"],
        ["a\n", "ab\n", "racecar\n", "abcdefghijklmnopqrstuvwxyz\n", _rand_word(500) + "\n"]),

    _spec("gcd_of_two", "easy", """
        Compute the greatest common divisor of two non-negative integers.

        Input
        One line with two integers a and b (0 <= a, b <= 10^18, not both zero).

        Output
        Print gcd(a, b), the largest positive integer dividing both (gcd(x, 0) = x).
        """, """
        a, b = map(int, input().split())
        while b:
            a, b = b, a % b
        print(a)
        """,
        ["12 18\n"],
        ["0 5\n", "7 0\n", "17 13\n", "1000000000000000000 999999999999999999\n",
         "1000000000000000000 250000000000000000\n", "36 36\n"]),

    _spec("is_prime", "easy", """
        Decide whether a number is prime.

        Input
        One line with an integer n (1 <= n <= 10^12).

        Output
        Print YES if n is a prime number and NO otherwise (1 is not prime).
        """, """
        n = int(input())
        def is_prime(n):
            if n < 2:
                return False
            if n % 2 == 0:
                return n == 2
            d = 3
            while d * d <= n:
                if n % d == 0:
                    return False
                d += 2
            return True
        print("YES" if is_prime(n) else "NO")
        """,
        ["7\n", "9\n"],
        ["1\n", "2\n", "4\n", "999999999989\n", "999999999999\n", "1000000007\n",
         "25\n"]),

    _spec("palindrome_check", "easy", """
        Decide whether a word reads the same forwards and backwards.

        Input
        One line with a string s of 1 to 1000 lowercase English letters.

        Output
        Print YES if s is a palindrome and NO otherwise.
        """, """
        s = input().strip()
        print("YES" if s == s[::-1] else "NO")
        """,
        ["level\n", "hello\n"],
        ["a\n", "ab\n", "aa\n", "abcba\n", "abccbx\n", "abcdeedcba\n"]),

    _spec("fizzbuzz", "easy", """
        Print the FizzBuzz sequence.

        Input
        One line with an integer n (1 <= n <= 1000).

        Output
        Print n lines. Line i (1-based) is "FizzBuzz" if i is divisible by 15, "Fizz" if it
        is divisible by 3 only, "Buzz" if it is divisible by 5 only, and the number i
        otherwise.
        """, """
        n = int(input())
        for i in range(1, n + 1):
            if i % 15 == 0:
                print("FizzBuzz")
            elif i % 3 == 0:
                print("Fizz")
            elif i % 5 == 0:
                print("Buzz")
            else:
                print(i)
        """,
        ["5\n"],
        ["1\n", "3\n", "15\n", "16\n", "100\n"]),

    _spec("matrix_transpose", "easy", """
        Transpose a matrix.

        Input
        The first line contains two integers r and c (1 <= r, c <= 50). Each of the next r
        lines contains c integers separated by single spaces: the rows of the matrix.

        Output
        Print c lines with r integers each, separated by single spaces: the rows of the
        transposed matrix (row j of the output is column j of the input).
        """, """
        r, c = map(int, input().split())
        m = [input().split() for _ in range(r)]
        for j in range(c):
            print(" ".join(m[i][j] for i in range(r)))
        """,
        ["2 3\n1 2 3\n4 5 6\n"],
        ["1 1\n42\n", "1 4\n1 2 3 4\n", "4 1\n1\n2\n3\n4\n", "3 3\n1 2 3\n4 5 6\n7 8 9\n",
         "2 2\n-1 0\n0 -1\n",
         "5 6\n" + "".join(_ints(_rand_list(6, -99, 99)) + "\n" for _ in range(5))]),

    _spec("range_sum_queries", "medium", """
        Answer range-sum queries on an array.

        Input
        The first line contains two integers n and q (1 <= n, q <= 10^5). The second line
        contains n integers a_1 ... a_n (|a_i| <= 10^9). Each of the next q lines contains
        two integers l and r (1 <= l <= r <= n).

        Output
        For each query print, on its own line, a_l + a_{l+1} + ... + a_r.
        """, """
        import sys
        data = sys.stdin.read().split()
        n, q = int(data[0]), int(data[1])
        prefix = [0] * (n + 1)
        for i in range(n):
            prefix[i + 1] = prefix[i] + int(data[2 + i])
        out = []
        pos = 2 + n
        for _ in range(q):
            l, r = int(data[pos]), int(data[pos + 1])
            pos += 2
            out.append(str(prefix[r] - prefix[l - 1]))
        print("\\n".join(out))
        """,
        ["5 3\n1 2 3 4 5\n1 5\n2 3\n4 4\n"],
        ["1 1\n-5\n1 1\n", "3 2\n1000000000 1000000000 1000000000\n1 3\n2 2\n",
         "4 3\n1 -1 1 -1\n1 2\n1 3\n2 4\n",
         "6 2\n0 0 0 0 0 0\n1 6\n3 4\n",
         "50 5\n" + _ints(_rand_list(50, -1000, 1000)) + "\n1 50\n10 20\n25 25\n1 1\n50 50\n"]),

    _spec("pair_sum_count", "medium", """
        Count pairs of positions whose values add up to a target.

        Input
        The first line contains two integers n and k (1 <= n <= 10^5, |k| <= 2*10^9). The
        second line contains n integers a_1 ... a_n (|a_i| <= 10^9).

        Output
        Print the number of pairs (i, j) with 1 <= i < j <= n and a_i + a_j = k.
        """, """
        from collections import Counter
        n, k = map(int, input().split())
        a = list(map(int, input().split()))
        seen = Counter()
        pairs = 0
        for x in a[:n]:
            pairs += seen[k - x]
            seen[x] += 1
        print(pairs)
        """,
        ["5 6\n1 5 3 3 2\n"],
        ["1 2\n1\n", "4 4\n2 2 2 2\n", "3 0\n0 0 0\n", "4 10\n1 2 3 4\n",
         "5 0\n-1 1 -1 1 0\n", "60 10\n" + _ints(_rand_list(60, 0, 10)) + "\n"]),

    _spec("climbing_stairs", "easy", """
        Count the ways to climb a staircase.

        Input
        One line with an integer n (1 <= n <= 90), the number of steps.

        Output
        Print the number of different ways to reach the top when each move climbs either 1
        or 2 steps (the order of the moves matters).
        """, """
        n = int(input())
        a, b = 1, 1
        for _ in range(n):
            a, b = b, a + b
        print(a)
        """,
        ["3\n"],
        ["1\n", "2\n", "4\n", "10\n", "45\n", "90\n"]),

    _spec("sort_numbers", "easy", """
        Sort a list of integers in non-decreasing order.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the n integers in non-decreasing order on one line, separated by single
        spaces.
        """, """
        n = int(input())
        a = sorted(map(int, input().split()))
        print(" ".join(map(str, a[:n])))
        """,
        ["5\n3 1 4 1 5\n"],
        ["1\n0\n", "2\n2 1\n", "4\n-1 -3 -2 -4\n", "5\n1 2 3 4 5\n",
         _list_input(_rand_list(100, -10**9, 10**9))]),

    _spec("count_vowels", "easy", """
        Count the vowels in a line of text.

        Input
        One line of at most 1000 characters: English letters (either case) and spaces.

        Output
        Print the number of vowels in the line. The vowels are a, e, i, o, u in either
        case; y is not a vowel.
        """, """
        s = input()
        print(sum(1 for ch in s.lower() if ch in "aeiou"))
        """,
        ["Hello World\n"],
        ["AEIOU aeiou\n", "rhythm\n", "x\n", "The quick brown fox jumps over the lazy dog\n",
         "YyYy\n", "a\n"]),

    _spec("digit_sum", "easy", """
        Sum the decimal digits of a big number.

        Input
        One line with a non-negative integer N written with 1 to 1000 decimal digits and no
        leading zeros (N = 0 is written as "0").

        Output
        Print the sum of the digits of N.
        """, """
        s = input().strip()
        print(sum(int(ch) for ch in s))
        """,
        ["12345\n"],
        ["0\n", "9\n", "1000000\n", "9" * 1000 + "\n", "".join(_rng.choice("0123456789")
                                                                 for _ in range(300)).lstrip("0") + "7\n"]),

    _spec("second_largest", "easy", """
        Find the second largest distinct value in a list.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the second largest distinct value, i.e. the largest value strictly smaller
        than the maximum. If all values are equal, print NONE.
        """, """
        n = int(input())
        values = sorted(set(map(int, input().split())))
        print(values[-2] if len(values) >= 2 else "NONE")
        """,
        ["5\n4 1 4 3 2\n"],
        ["1\n5\n", "3\n7 7 7\n", "2\n-1 -2\n", "4\n10 10 9 9\n", "5\n-5 0 5 0 5\n",
         _list_input(_rand_list(80, -100, 100))]),

    _spec("run_length_encoding", "easy", """
        Compress a word with run-length encoding.

        Input
        One line with a string s of 1 to 1000 lowercase English letters.

        Output
        Replace every maximal block of equal consecutive letters by the letter followed by
        the block's length, and print the result on one line. For example, aaabccdddd
        becomes a3b1c2d4.
        """, """
        s = input().strip()
        out = []
        i = 0
        while i < len(s):
            j = i
            while j < len(s) and s[j] == s[i]:
                j += 1
            out.append(s[i] + str(j - i))
            i = j
        print("".join(out))
        """,
        ["aaabccdddd\n"],
        ["a\n", "abc\n", "zzzzzzzzzzzz\n", "abba\n", "a" * 1000 + "\n",
         "".join(_rng.choice("ab") for _ in range(60)) + "\n"]),

    _spec("max_minus_min", "easy", """
        Find the spread of a list of integers.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the difference between the largest and the smallest value.
        """, """
        n = int(input())
        a = list(map(int, input().split()))[:n]
        print(max(a) - min(a))
        """,
        ["4\n3 9 -2 7\n"],
        ["1\n100\n", "3\n5 5 5\n", "2\n-1000000000 1000000000\n", "3\n-3 -7 -5\n",
         _list_input(_rand_list(120, -10**6, 10**6))]),

    _spec("balanced_brackets", "medium", """
        Check whether a bracket sequence is balanced.

        Input
        One line with a string of 1 to 1000 characters, each one of ( ) [ ] { }.

        Output
        Print YES if every opening bracket is closed by the matching closing bracket in the
        correct order, and NO otherwise.
        """, """
        s = input().strip()
        pairs = {")": "(", "]": "[", "}": "{"}
        stack = []
        ok = True
        for ch in s:
            if ch in "([{":
                stack.append(ch)
            elif not stack or stack.pop() != pairs[ch]:
                ok = False
                break
        print("YES" if ok and not stack else "NO")
        """,
        ["([]{})\n", "([)]\n"],
        ["(\n", ")\n", "()\n", "(((())))\n", "{[()()]}\n", "())(\n", "(" * 500 + ")" * 500 + "\n",
         "[]]\n"]),

    _spec("factorial_mod", "easy", """
        Compute a factorial modulo a prime.

        Input
        One line with an integer n (0 <= n <= 10^5).

        Output
        Print n! modulo 1000000007 (0! = 1).
        """, """
        n = int(input())
        MOD = 10**9 + 7
        r = 1
        for i in range(2, n + 1):
            r = r * i % MOD
        print(r)
        """,
        ["5\n"],
        ["0\n", "1\n", "12\n", "13\n", "100000\n", "1000\n"]),

    _spec("fibonacci_number", "easy", """
        Compute a Fibonacci number.

        Input
        One line with an integer n (0 <= n <= 90).

        Output
        Print F(n), where F(0) = 0, F(1) = 1 and F(n) = F(n-1) + F(n-2).
        """, """
        n = int(input())
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        print(a)
        """,
        ["10\n"],
        ["0\n", "1\n", "2\n", "50\n", "90\n"]),

    _spec("word_count", "easy", """
        Count the words in a line.

        Input
        One line of at most 1000 characters made of lowercase letters and spaces. Words are
        maximal runs of letters; there may be several spaces between words and spaces at
        the start or end. The line may contain no letters at all.

        Output
        Print the number of words.
        """, """
        import sys
        line = sys.stdin.readline()
        print(len(line.split()))
        """,
        ["the cat sat\n"],
        ["word\n", "   \n", "  many   spaces   here  \n", "a b c d e f g\n", "\n"]),

    _spec("anagram_check", "easy", """
        Decide whether two words are anagrams.

        Input
        Two lines, each with a string of 1 to 1000 lowercase English letters.

        Output
        Print YES if the second word is a rearrangement of the letters of the first (same
        letters with the same multiplicities), and NO otherwise.
        """, """
        s = input().strip()
        t = input().strip()
        print("YES" if sorted(s) == sorted(t) else "NO")
        """,
        ["listen\nsilent\n"],
        ["a\na\n", "a\nb\n", "ab\nabc\n", "aab\nabb\n", "triangle\nintegral\n", "abc\ncba\n"]),

    _spec("matrix_trace", "easy", """
        Compute the trace of a square matrix.

        Input
        The first line contains an integer n (1 <= n <= 100). Each of the next n lines
        contains n integers (|a_ij| <= 10^6) separated by single spaces.

        Output
        Print the sum of the main-diagonal entries a_11 + a_22 + ... + a_nn.
        """, """
        n = int(input())
        total = 0
        for i in range(n):
            row = list(map(int, input().split()))
            total += row[i]
        print(total)
        """,
        ["2\n1 2\n3 4\n"],
        ["1\n-9\n", "3\n1 0 0\n0 1 0\n0 0 1\n", "3\n5 9 9\n9 -5 9\n9 9 5\n",
         "2\n1000000 0\n0 1000000\n",
         "6\n" + "".join(_ints(_rand_list(6, -10**6, 10**6)) + "\n" for _ in range(6))]),

    _spec("to_binary", "easy", """
        Write a number in base 2.

        Input
        One line with an integer n (0 <= n <= 10^18).

        Output
        Print n in binary, without leading zeros (0 is printed as 0).
        """, """
        n = int(input())
        if n == 0:
            print(0)
        else:
            bits = []
            while n:
                bits.append(str(n & 1))
                n >>= 1
            print("".join(reversed(bits)))
        """,
        ["10\n"],
        ["0\n", "1\n", "2\n", "255\n", "1000000000000000000\n", "1024\n"]),

    _spec("max_subarray_sum", "medium", """
        Find the largest sum of a non-empty contiguous block of an array.

        Input
        The first line contains an integer n (1 <= n <= 10^5). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the maximum of a_l + ... + a_r over all 1 <= l <= r <= n.
        """, """
        n = int(input())
        a = list(map(int, input().split()))[:n]
        best = cur = a[0]
        for x in a[1:]:
            cur = max(x, cur + x)
            best = max(best, cur)
        print(best)
        """,
        ["8\n-2 1 -3 4 -1 2 1 -5\n"],
        ["1\n-5\n", "3\n-3 -1 -2\n", "4\n1 2 3 4\n", "5\n5 -10 5 -10 5\n",
         _list_input(_rand_list(200, -1000, 1000))]),

    _spec("count_distinct", "easy", """
        Count distinct values.

        Input
        The first line contains an integer n (1 <= n <= 10^5). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print how many different values occur in the list.
        """, """
        n = int(input())
        print(len(set(input().split()[:n])))
        """,
        ["6\n1 2 2 3 3 3\n"],
        ["1\n0\n", "4\n7 7 7 7\n", "5\n1 2 3 4 5\n", "3\n-1 1 -1\n",
         _list_input(_rand_list(100, 0, 30))]),

    _spec("leap_year", "easy", """
        Decide whether a year is a leap year in the Gregorian calendar.

        Input
        One line with an integer y (1 <= y <= 10^9).

        Output
        Print YES if y is a leap year and NO otherwise. A year is a leap year if it is
        divisible by 4, except years divisible by 100, which are leap years only when also
        divisible by 400.
        """, """
        y = int(input())
        print("YES" if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else "NO")
        """,
        ["2024\n", "2023\n"],
        ["1900\n", "2000\n", "4\n", "1\n", "2100\n", "1000000000\n"]),

    _spec("caesar_shift", "easy", """
        Encrypt a word with a Caesar shift.

        Input
        The first line contains an integer k (0 <= k <= 25). The second line contains a
        string of 1 to 1000 lowercase English letters.

        Output
        Print the string with every letter moved k places forward in the alphabet,
        wrapping around from z to a.
        """, """
        k = int(input())
        s = input().strip()
        print("".join(chr((ord(ch) - 97 + k) % 26 + 97) for ch in s))
        """,
        ["3\nabcxyz\n"],
        ["0\nhello\n", "25\nabc\n", "1\nz\n", "13\nuryyb\n", "7\n" + _rand_word(200) + "\n"]),

    _spec("longest_increasing_subsequence", "medium", """
        Find the length of the longest strictly increasing subsequence.

        Input
        The first line contains an integer n (1 <= n <= 10^5). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the largest k such that there are indices i_1 < i_2 < ... < i_k with
        a_{i_1} < a_{i_2} < ... < a_{i_k}.
        """, """
        from bisect import bisect_left
        n = int(input())
        a = list(map(int, input().split()))[:n]
        tails = []
        for x in a:
            pos = bisect_left(tails, x)
            if pos == len(tails):
                tails.append(x)
            else:
                tails[pos] = x
        print(len(tails))
        """,
        ["6\n10 9 2 5 3 7\n"],
        ["1\n5\n", "4\n4 3 2 1\n", "5\n1 2 3 4 5\n", "6\n2 2 2 2 2 2\n",
         "8\n0 8 4 12 2 10 6 14\n", _list_input(_rand_list(300, 0, 1000))]),
]

# ------------------------------------------------------------------------------------
# eval split (disjoint tasks)
# ------------------------------------------------------------------------------------

EVAL: list[Spec] = [
    _spec("floor_average", "easy", """
        Compute the average of a list of integers, rounded down.

        Input
        The first line contains an integer n (1 <= n <= 1000). The second line contains n
        integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print floor((a_1 + ... + a_n) / n), rounding towards negative infinity (the
        average of -1 and -2 prints -2).
        """, """
        n = int(input())
        a = list(map(int, input().split()))[:n]
        print(sum(a) // n)
        """,
        ["4\n1 2 3 5\n"],
        ["1\n7\n", "2\n-1 -2\n", "3\n1 1 2\n", "2\n1000000000 999999999\n",
         "5\n-5 -5 -5 -5 -4\n", _list_input(_rand_list(90, -10**9, 10**9))]),

    _spec("count_primes", "medium", """
        Count the prime numbers up to a bound.

        Input
        One line with an integer n (1 <= n <= 10^6).

        Output
        Print the number of primes p with 2 <= p <= n.
        """, """
        n = int(input())
        sieve = bytearray([1]) * (n + 1)
        sieve[0:2] = b"\\x00\\x00"[: min(2, n + 1)]
        i = 2
        while i * i <= n:
            if sieve[i]:
                sieve[i * i :: i] = bytearray(len(range(i * i, n + 1, i)))
            i += 1
        print(sum(sieve))
        """,
        ["10\n"],
        ["1\n", "2\n", "3\n", "100\n", "1000000\n", "97\n"]),

    _spec("lcm_of_list", "medium", """
        Compute the least common multiple of a list of positive integers.

        Input
        The first line contains an integer n (1 <= n <= 100). The second line contains n
        integers (1 <= a_i <= 10^6) separated by single spaces.

        Output
        Print the smallest positive integer divisible by every a_i (it may be very large).
        """, """
        from math import gcd
        n = int(input())
        result = 1
        for x in list(map(int, input().split()))[:n]:
            result = result * x // gcd(result, x)
        print(result)
        """,
        ["3\n4 6 10\n"],
        ["1\n1\n", "1\n999983\n", "2\n7 7\n", "10\n1 2 3 4 5 6 7 8 9 10\n",
         "3\n1000000 999999 999998\n", _list_input(_rand_list(30, 1, 100))]),

    _spec("reverse_words", "easy", """
        Reverse the order of the words in a sentence.

        Input
        One line with 1 to 100 words separated by single spaces; each word is 1 to 20
        lowercase English letters.

        Output
        Print the same words in reverse order, separated by single spaces.
        """, """
        words = input().split()
        print(" ".join(reversed(words)))
        """,
        ["the sky is blue\n"],
        ["hello\n", "a b\n", "one two three four five\n", "same same same\n",
         " ".join(_rand_word(_rng.randint(1, 8)) for _ in range(40)) + "\n"]),

    _spec("matrix_multiply", "medium", """
        Multiply two integer matrices.

        Input
        The first line contains three integers n, m and p (1 <= n, m, p <= 30). The next n
        lines hold matrix A (n rows of m integers); the following m lines hold matrix B (m
        rows of p integers). All entries satisfy |x| <= 1000.

        Output
        Print the n x p matrix C = A * B: n lines of p integers separated by single spaces,
        where C_ij = sum over k of A_ik * B_kj.
        """, """
        import sys
        data = list(map(int, sys.stdin.read().split()))
        n, m, p = data[0], data[1], data[2]
        pos = 3
        A = [data[pos + i * m: pos + (i + 1) * m] for i in range(n)]
        pos += n * m
        B = [data[pos + i * p: pos + (i + 1) * p] for i in range(m)]
        for i in range(n):
            print(" ".join(str(sum(A[i][k] * B[k][j] for k in range(m))) for j in range(p)))
        """,
        ["2 2 2\n1 2\n3 4\n5 6\n7 8\n"],
        ["1 1 1\n-3\n4\n", "1 3 1\n1 2 3\n4\n5\n6\n", "3 1 3\n1\n2\n3\n1 2 3\n",
         "2 2 2\n1 0\n0 1\n9 -8\n7 6\n",
         "4 3 5\n" + "".join(_ints(_rand_list(3, -1000, 1000)) + "\n" for _ in range(4))
         + "".join(_ints(_rand_list(5, -1000, 1000)) + "\n" for _ in range(3))]),

    _spec("longest_common_prefix", "easy", """
        Find the longest common prefix of several words.

        Input
        The first line contains an integer n (1 <= n <= 100). Each of the next n lines
        contains a word of 1 to 100 lowercase English letters.

        Output
        Print the longest string that is a prefix of every word. If it is empty, print
        the single word EMPTY instead.
        """, """
        n = int(input())
        words = [input().strip() for _ in range(n)]
        prefix = words[0]
        for w in words[1:]:
            while not w.startswith(prefix):
                prefix = prefix[:-1]
        print(prefix if prefix else "EMPTY")
        """,
        ["3\nflower\nflow\nflight\n"],
        ["1\nalone\n", "2\ndog\ncar\n", "3\nabc\nabc\nabc\n", "2\nab\na\n",
         "4\ninterview\ninternet\ninterval\ninternal\n"]),

    _spec("coin_change_ways", "medium", """
        Count the ways to pay an amount with coins.

        Input
        The first line contains two integers n and s (1 <= n <= 50, 0 <= s <= 10^4): the
        number of coin kinds and the amount. The second line contains n distinct
        integers c_1 ... c_n (1 <= c_i <= 10^4), the coin values. Every kind is available
        in unlimited supply.

        Output
        Print the number of different multisets of coins whose values add up to s (the
        order of the coins does not matter; s = 0 is paid in exactly one way).
        """, """
        n, s = map(int, input().split())
        coins = list(map(int, input().split()))[:n]
        ways = [1] + [0] * s
        for c in coins:
            for v in range(c, s + 1):
                ways[v] += ways[v - c]
        print(ways[s])
        """,
        ["3 5\n1 2 5\n"],
        ["1 0\n7\n", "1 3\n2\n", "2 10\n5 10\n", "4 100\n1 5 10 25\n", "3 7\n2 4 6\n",
         "5 1000\n1 2 5 10 20\n"]),

    _spec("window_max_sum", "easy", """
        Find the largest sum of k consecutive elements.

        Input
        The first line contains two integers n and k (1 <= k <= n <= 10^5). The second line
        contains n integers (|a_i| <= 10^9) separated by single spaces.

        Output
        Print the maximum of a_i + a_{i+1} + ... + a_{i+k-1} over 1 <= i <= n - k + 1.
        """, """
        n, k = map(int, input().split())
        a = list(map(int, input().split()))[:n]
        cur = sum(a[:k])
        best = cur
        for i in range(k, n):
            cur += a[i] - a[i - k]
            best = max(best, cur)
        print(best)
        """,
        ["5 2\n1 3 -1 5 2\n"],
        ["1 1\n-4\n", "3 3\n1 2 3\n", "4 1\n-1 -2 -3 -4\n", "6 2\n5 5 -100 5 5 0\n",
         "100 7\n" + _ints(_rand_list(100, -10**9, 10**9)) + "\n"]),

    _spec("merge_sorted_lists", "easy", """
        Merge two sorted lists.

        Input
        The first line contains n (1 <= n <= 1000), the second n integers in
        non-decreasing order. The third line contains m (1 <= m <= 1000), the fourth m
        integers in non-decreasing order. All values satisfy |x| <= 10^9.

        Output
        Print all n + m values in non-decreasing order on one line, separated by single
        spaces.
        """, """
        n = int(input())
        a = list(map(int, input().split()))[:n]
        m = int(input())
        b = list(map(int, input().split()))[:m]
        i = j = 0
        out = []
        while i < n and j < m:
            if a[i] <= b[j]:
                out.append(a[i]); i += 1
            else:
                out.append(b[j]); j += 1
        out.extend(a[i:]); out.extend(b[j:])
        print(" ".join(map(str, out)))
        """,
        ["3\n1 4 9\n2\n2 5\n"],
        ["1\n1\n1\n1\n", "2\n-5 -1\n3\n0 2 4\n", "3\n7 8 9\n3\n1 2 3\n", "4\n1 1 1 1\n1\n1\n",
         (f"40\n{_ints(sorted(_rand_list(40, -100, 100)))}\n25\n"
          f"{_ints(sorted(_rand_list(25, -100, 100)))}\n")]),

    _spec("edit_distance", "hard", """
        Compute the edit distance between two words.

        Input
        Two lines, each with a string of 1 to 500 lowercase English letters.

        Output
        Print the minimum number of single-letter insertions, deletions and substitutions
        that turn the first word into the second.
        """, """
        s = input().strip()
        t = input().strip()
        prev = list(range(len(t) + 1))
        for i, a in enumerate(s, 1):
            cur = [i] + [0] * len(t)
            for j, b in enumerate(t, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b))
            prev = cur
        print(prev[len(t)])
        """,
        ["kitten\nsitting\n"],
        ["a\na\n", "a\nb\n", "abc\nabcdef\n", "intention\nexecution\n", "abcdef\nfedcba\n",
         _rand_word(200, "abc") + "\n" + _rand_word(180, "abc") + "\n"]),

    _spec("collatz_steps", "easy", """
        Count the steps of the Collatz process.

        Input
        One line with an integer n (1 <= n <= 10^9).

        Output
        Repeatedly replace n by n / 2 if it is even and by 3n + 1 if it is odd, until n
        becomes 1. Print the number of replacements made (0 when n = 1).
        """, """
        n = int(input())
        steps = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        print(steps)
        """,
        ["6\n"],
        ["1\n", "2\n", "27\n", "1000000000\n", "837799\n", "7\n"]),

    _spec("most_frequent_letter", "easy", """
        Find the most frequent letter of a word.

        Input
        One line with a string of 1 to 1000 lowercase English letters.

        Output
        Print the letter that occurs most often and its number of occurrences, separated by
        a space. If several letters tie, print the one that comes first in the alphabet.
        """, """
        from collections import Counter
        s = input().strip()
        counts = Counter(s)
        letter = min(counts, key=lambda ch: (-counts[ch], ch))
        print(letter, counts[letter])
        """,
        ["banana\n"],
        ["z\n", "abc\n", "zzyy\n", "mississippi\n", _rand_word(500) + "\n"]),
]
