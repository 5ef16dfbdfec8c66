from __future__ import annotations

import pytest
import torch

from client.entropy_bonus import entropy_bonus


def exact_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def test_direct_term_with_a_gradient_is_minus_coeff_times_the_masked_mean() -> None:
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    h = exact_entropy(logits)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    term = entropy_bonus(0.1, h, mask)
    assert term.item() == pytest.approx(-0.1 * (h * mask).sum().item() / 6)
    term.backward()
    assert logits.grad is not None and logits.grad[2].abs().sum() == 0  # masked rows: no grad


@pytest.mark.parametrize("with_entropy", [True, False], ids=["entropy-baseline", "no-entropy"])
def test_surrogate_gradient_matches_the_entropy_gradient_in_expectation(
    with_entropy: bool,
) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g, requires_grad=True)  # 4 positions, 6 tokens
    exact = torch.autograd.grad(exact_entropy(logits).mean(), logits)[0]
    n = 200_000  # samples per position
    logp = torch.log_softmax(logits, dim=-1)
    tokens = torch.multinomial(logp.exp().detach(), n, replacement=True, generator=g)  # 4, n
    log_prob = logp.gather(1, tokens)  # 4, n: the sampled tokens' log-probs, with grad
    h = exact_entropy(logits).detach().unsqueeze(1).expand(-1, n)  # no grad
    term = entropy_bonus(1.0, h if with_entropy else None, torch.ones(4, n), log_prob)
    surrogate = torch.autograd.grad(-term, logits)[0]  # -term: the entropy's gradient
    assert torch.allclose(surrogate, exact, atol=3e-3), (surrogate, exact)
    assert exact.abs().max() > 0.02  # the check is not against a zero gradient


def test_zero_coeff_is_zero_and_missing_log_prob_is_a_clear_error() -> None:
    h = torch.ones(2, 3)
    mask = torch.ones(2, 3)
    assert entropy_bonus(0.0, h, mask).item() == 0.0
    with pytest.raises(ValueError, match="no gradient: pass log_prob"):
        entropy_bonus(0.1, h, mask)
    with pytest.raises(ValueError, match="response_mask shape"):
        entropy_bonus(0.1, h, torch.ones(3, 2))


def test_aggregate_replaces_the_token_mean() -> None:
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    h = exact_entropy(logits)
    mask = torch.ones(2, 3)
    term = entropy_bonus(0.5, h, mask, aggregate=lambda per_token: per_token.sum(-1).mean())
    assert term.item() == pytest.approx(-0.5 * h.sum(-1).mean().item())
