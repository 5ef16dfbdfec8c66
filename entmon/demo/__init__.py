"""`entmon demo`: the embedded stack (Redis + monitor + dashboard) and a live toy GRPO run in it.

`stack` starts the processes and drives the run; `toy` is the trainer (a tiny transformer on CPU
whose entropy collapses). Both install with the wheel: the demo needs no checkout.
"""
