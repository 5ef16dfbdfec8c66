"""A second testbed in the paper's regime: a tiny transformer LM pretrained (from scratch, on noisy
demonstrations) on written-out arithmetic, then trained by GRPO through entmon.

`task` is the language and its verifiable reward, `model` the transformer, `pretrain` the seeded
pretraining cached on first use, `grpo` the RL trainer (same interface as entmon.demo.toy's).
"""
