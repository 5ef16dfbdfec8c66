"""Token entropy of a softmax policy, from logits, in fp32, chunked over rows.

H(z) = logsumexp(z) - sum_v softmax(z)_v * z_v, in nats. The full [tokens x vocab] softmax is
never held: rows go through in chunks, so the extra memory is O(chunk_size x vocab) whatever the
number of tokens. Callers whose kernels never build full logits (TRL >= 1.15, verl's fused
kernels) already have per-token entropy: they pass it to `StepAccumulator.add(entropy=...)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk. 256 rows of a 32k vocabulary are 32 MiB per fp32 temporary: small next to a
# full softmax and large enough that per-chunk overhead is negligible (bench/bench_entropy.py).
DEFAULT_CHUNK_SIZE = 256


@torch.no_grad()
def token_entropy(logits: Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Entropy (nats, fp32) of each row of `logits`; shape `logits.shape[:-1]`.

    -inf logits (a masked vocabulary) contribute nothing; NaN or +inf logits give NaN, which
    the statistics report as non-finite instead of hiding.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    V = logits.shape[-1]  # vocab
    rows = logits.reshape(-1, V)  # N, V (a view when contiguous)
    N = rows.shape[0]  # tokens
    out = torch.empty(N, dtype=torch.float32, device=logits.device)
    for start in range(0, N, chunk_size):
        out[start : start + chunk_size] = _entropy_rows(rows[start : start + chunk_size])
    return out.reshape(logits.shape[:-1])


def _entropy_rows(z: Tensor) -> Tensor:
    z = z.float()  # C, V (a copy only for half precision input)
    m = z.amax(dim=-1, keepdim=True)  # C, 1
    m = torch.where(torch.isneginf(m), 0.0, m)  # a fully masked row: keep exp finite
    shifted = z - m  # C, V; -inf stays -inf
    e = shifted.exp()  # C, V; exactly 0 at -inf
    s = e.sum(dim=-1)  # C
    # e * shifted is 0 * -inf = NaN at masked entries; those contribute 0. A NaN from a NaN
    # logit is not lost: it already made m, and so s, NaN.
    ez = e.mul_(shifted).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).sum(dim=-1)  # C
    return s.log() - ez / s
