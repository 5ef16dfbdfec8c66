"""The demo's toy GRPO run (entmon.demo.toy) against your own monitor: a copy-paste start.

    entmon serve &                      # the monitor API on 127.0.0.1:8000
    python examples/grpo_toy.py --url http://127.0.0.1:8000 --run toy --steps 300
    entmon dashboard                    # watch it; switch loss_mode on the Control page

The trainer calls `mon.policy_loss(...)` for its loss (it follows the run's live control) and
`mon.log(step, reward=...)` at the end of each step; read `train` in entmon/demo/toy.py.
"""

from __future__ import annotations

import argparse

from client import Monitor
from entmon.demo.toy import DigitTokenizer, StepRecord, ToyConfig, progress_line, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="monitor URL (default: $ENTMON_URL)")
    parser.add_argument("--run", default="grpo-toy")
    parser.add_argument("--steps", type=int, default=ToyConfig.steps)
    parser.add_argument("--seed", type=int, default=ToyConfig.seed)
    args = parser.parse_args(argv)
    cfg = ToyConfig(steps=args.steps, seed=args.seed)
    start: list[float] = []

    def show(record: StepRecord) -> None:
        if not start:
            start.append(record.entropy)
        print(progress_line(record, cfg.steps, start[0]), end="", flush=True)

    with Monitor(run=args.run, url=args.url, tokenizer=DigitTokenizer()) as mon:
        train(cfg, mon, on_step=show)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
