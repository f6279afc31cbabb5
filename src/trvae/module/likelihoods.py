"""Count likelihoods of the decoder: negative binomial and zero-inflated negative binomial."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nb_log_likelihood(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-likelihood (mean ``mu``, inverse dispersion ``theta``), elementwise."""
    eps = 1e-8
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def zinb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor
) -> torch.Tensor:
    """Zero-inflated NB log-likelihood; ``pi_logits`` are the logits of the zero-inflation."""
    eps = 1e-8
    nb = nb_log_likelihood(x, mu, theta)
    log_nb_zero = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    case_zero = torch.logaddexp(pi_logits, log_nb_zero) - F.softplus(pi_logits)
    case_nonzero = nb - F.softplus(pi_logits)
    return torch.where(x < 0.5, case_zero, case_nonzero)
