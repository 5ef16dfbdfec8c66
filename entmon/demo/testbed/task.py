"""Reach the target: a reasoning trace in a 16-token language with a verifiable reward.

A prompt is five digits and a target digit, `n1 n2 n3 n4 n5 > t |`. The answer combines the
digits left to right with + or - (mod 10), writing every step out:

    n1 + n2 = s2 , s2 - n3 = s3 , s3 + n4 = s4 , s4 - n5 = s5 ,

Of its 24 tokens only the 4 operators are choices (the forks); the rest follow from the prompt
and the tokens before them: copies (the running value, the next digit), format (`=`, `,`) and the
arithmetic (each result). The reward is 1 when the trace is valid (every copy and sum right) and
ends on the target, else 0. Targets are reachable by at least one of the 16 operator sequences.

The pretraining demonstrations are noisy: their operators are drawn from a biased coin (mostly
+), only some of them aim at the target, and a few results are miscomputed. So the pretrained
prior is a language model's: near-certain on the 20 determined tokens, unsure at the 4 forks,
and a poor solver of the task (which RL then sharpens).

The RL task is a fixed pool of prompts whose targets are drawn like the demonstrations' (the end
of a uniformly drawn operator sequence), so each prompt is its own problem, as in a math data
set: RL finds and sharpens, prompt by prompt, operators that reach the target. The reward rises
as the pool's prompts are solved one by one (a smooth curve over many prompts, not one rule found
or missed), and the prompts whose answers need operators the prior rarely writes (several -) are
the least likely to be found before the policy collapses: the ceiling.
"""

from __future__ import annotations

import torch
from torch import Tensor

DIGITS = 10
PLUS, MINUS, EQUALS, COMMA, TARGET, SEP = range(DIGITS, DIGITS + 6)
VOCAB = DIGITS + 6
NUMBERS = 5  # digits in a prompt
STEPS = NUMBERS - 1  # operators (forks) in an answer
PROMPT_LEN = NUMBERS + 3  # n1..n5 > t |
STEP_LEN = 6  # prev op n = s ,
ANSWER_LEN = STEPS * STEP_LEN
_TEXT = "0123456789+-=,>|"


class TraceTokenizer:
    """What `Monitor(tokenizer=...)` needs to show the top tokens as text."""

    def decode(self, token_ids: list[int]) -> str:
        return "".join(_TEXT[t] if 0 <= t < VOCAB else "?" for t in token_ids)


def all_op_sequences() -> Tensor:
    """The 2**STEPS operator sequences, 1 for +, 0 for -."""
    codes = torch.arange(2**STEPS).unsqueeze(1)  # 16, 1
    return (codes >> torch.arange(STEPS)) & 1  # 16, STEPS


def finals(numbers: Tensor) -> Tensor:
    """The final value of every operator sequence for each prompt's digits."""
    ops = all_op_sequences()  # S, STEPS
    sign = 2 * ops - 1  # S, STEPS: +1 or -1
    total = numbers[:, :1] + (sign.unsqueeze(0) * numbers[:, None, 1:]).sum(-1)  # B, S
    return total.remainder(DIGITS)


def write_traces(numbers: Tensor, plus: Tensor, errors: Tensor, wrong: Tensor) -> Tensor:
    """Answers for `numbers` (B, 5) with operators `plus` (B, 4; true = +). Where `errors`
    (B, 4) is true, that step's result is written as `wrong` (B, 4, digits 1..9 added mod 10)
    and the trace goes on from the wrong value, as a careless demonstrator's would."""
    B = numbers.shape[0]
    out = torch.empty(B, ANSWER_LEN, dtype=torch.long)
    prev = numbers[:, 0]
    for i in range(STEPS):
        n = numbers[:, i + 1]
        result = torch.where(plus[:, i], prev + n, prev - n).remainder(DIGITS)
        result = torch.where(errors[:, i], (result + wrong[:, i]).remainder(DIGITS), result)
        base = i * STEP_LEN
        out[:, base] = prev
        out[:, base + 1] = torch.where(plus[:, i], PLUS, MINUS)
        out[:, base + 2] = n
        out[:, base + 3] = EQUALS
        out[:, base + 4] = result
        out[:, base + 5] = COMMA
        prev = result
    return out


def make_prompts(numbers: Tensor, targets: Tensor) -> Tensor:
    B = numbers.shape[0]
    marks = torch.tensor([TARGET, SEP]).expand(B, 2)
    return torch.cat([numbers, marks[:, :1], targets.unsqueeze(1), marks[:, 1:]], dim=1)


def random_targets(numbers: Tensor, generator: torch.Generator) -> Tensor:
    """A reachable target per prompt: the final value of a uniformly drawn operator sequence."""
    pick = torch.randint(0, 2**STEPS, (numbers.shape[0],), generator=generator)
    return finals(numbers).gather(1, pick.unsqueeze(1)).squeeze(1)


def reward(prompts: Tensor, answers: Tensor) -> Tensor:
    """1.0 where the answer is a valid trace ending on the prompt's target, else 0.0."""
    numbers, target = prompts[:, :NUMBERS], prompts[:, NUMBERS + 1]
    steps = answers.view(-1, STEPS, STEP_LEN)  # B, STEPS, 6
    prev, op, n, eq, res, comma = steps.unbind(-1)  # each B, STEPS
    plus, minus = op == PLUS, op == MINUS
    expected_prev = torch.cat([numbers[:, :1], res[:, :-1]], dim=1)
    right = torch.where(plus, prev + n, prev - n).remainder(DIGITS)
    ok = (
        (prev == expected_prev)
        & (plus | minus)
        & (n == numbers[:, 1:])
        & (eq == EQUALS)
        & (comma == COMMA)
        & (res == right)
        & (prev < DIGITS)
        & (n < DIGITS)
    ).all(dim=1)
    return (ok & (res[:, -1] == target)).float()


class PromptPool:
    """The fixed prompts RL trains on (seeded), drawn with replacement each step."""

    def __init__(self, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(20_000 + seed)
        numbers = torch.randint(0, DIGITS, (size, NUMBERS), generator=g)
        self.prompts = make_prompts(numbers, random_targets(numbers, g))  # size, PROMPT_LEN

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.prompts.shape[0], (n,), generator=generator)


def demonstrations(
    n: int,
    generator: torch.Generator,
    *,
    plus_bias: float,
    aim: float,
    error_rate: float,
) -> Tensor:
    """`n` noisy demonstrations, whole sequences (prompt then answer), B x (PROMPT_LEN + 24).

    Operators: with probability `aim` one of the sequences that reach the target (uniformly),
    else a coin with P(+) = `plus_bias` per step. Each result is miscomputed with probability
    `error_rate`.
    """
    g = generator
    numbers = torch.randint(0, DIGITS, (n, NUMBERS), generator=g)
    targets = random_targets(numbers, g)
    coin = torch.rand(n, STEPS, generator=g) < plus_bias
    reach = (finals(numbers) == targets.unsqueeze(1)).float()  # n, S (each row has a 1)
    aimed = all_op_sequences()[torch.multinomial(reach, 1, generator=g).squeeze(1)].bool()
    use_aim = (torch.rand(n, generator=g) < aim).unsqueeze(1)
    plus = torch.where(use_aim, aimed, coin)
    errors = torch.rand(n, STEPS, generator=g) < error_rate
    wrong = torch.randint(1, DIGITS, (n, STEPS), generator=g)
    answers = write_traces(numbers, plus, errors, wrong)
    return torch.cat([make_prompts(numbers, targets), answers], dim=1)


def reaching_traces(prompts: Tensor) -> tuple[Tensor, Tensor]:
    """Every valid answer to each prompt: the 16 error-free traces, (B, 16, ANSWER_LEN), and
    whether each ends on the prompt's target, (B, 16). The reward is 1 exactly on those that
    do, so a model's expected reward is the probability it gives them."""
    numbers, target = prompts[:, :NUMBERS], prompts[:, NUMBERS + 1]
    B, S = numbers.shape[0], 2**STEPS
    ops = all_op_sequences().bool()  # S, STEPS
    rows = numbers.repeat_interleave(S, dim=0)  # B * S, NUMBERS
    plus = ops.repeat(B, 1)  # B * S, STEPS
    none = torch.zeros_like(plus)
    traces = write_traces(rows, plus, none, torch.zeros(B * S, STEPS, dtype=torch.long))
    return traces.view(B, S, ANSWER_LEN), finals(numbers) == target.unsqueeze(1)
