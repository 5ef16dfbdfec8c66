"""Pretraining the testbed's language model on noisy demonstrations, cached on first use.

The checkpoint is a pure function of `PretrainConfig` (seeded, single-threaded), so it is cached
under the user's cache directory keyed by a hash of the config and rebuilt when missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from entmon.demo.testbed.model import ModelConfig, TraceLM
from entmon.demo.testbed.task import PROMPT_LEN, demonstrations

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the task, model or training code changes what a config produces


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    steps: int = 800
    batch: int = 128
    lr: float = 4e-3
    warmup: int = 50
    plus_bias: float = 0.75  # the demonstrators' coin: P(+) at each fork
    aim: float = 0.2  # share of demonstrations whose operators reach the target
    error_rate: float = 0.01  # share of miscomputed results

    def key(self) -> str:
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    kept = os.environ.get("ENTMON_CACHE_DIR")
    if kept:
        return Path(kept)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "entmon"


def pretrain(cfg: PretrainConfig) -> TraceLM:
    """Train a fresh model on `cfg.steps` batches of fresh demonstrations (answer tokens only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = TraceLM(cfg.model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
        for step in range(cfg.steps):
            scale = min(1.0, (step + 1) / cfg.warmup)
            scale *= 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * scale
            seq = demonstrations(
                cfg.batch, gen,
                plus_bias=cfg.plus_bias, aim=cfg.aim, error_rate=cfg.error_rate,
            )  # fmt: skip
            logits = model(seq[:, :-1])[:, PROMPT_LEN - 1 :]  # B, A, VOCAB
            loss = F.cross_entropy(logits.flatten(0, 1), seq[:, PROMPT_LEN:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def load_pretrained(cfg: PretrainConfig, directory: Path | None = None) -> TraceLM:
    """The pretrained model for `cfg`: from the cache, or trained now and cached."""
    path = (directory or cache_dir()) / f"testbed-lm-{cfg.key()}.pt"
    model = TraceLM(cfg.model)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    t0 = time.perf_counter()
    log.info("pretraining the testbed LM (cached at %s)", path)
    model = pretrain(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: parallel runs may pretrain the same config at once
    log.info("pretrained in %.0f s", time.perf_counter() - t0)
    return model
