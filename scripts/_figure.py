"""What the scripts share beyond :mod:`bilevel.experiment`: headless matplotlib, and the
parts of a fields-of-experts theta (to draw or reuse learned filters without a problem)."""
from __future__ import annotations

import torch


def pyplot():
    """matplotlib.pyplot on the Agg backend (the scripts draw to files, never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, dpi=120, **layout):
    """Lay the figure out (``layout``: tight_layout's arguments), write it, free it."""
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def foe_parts(theta, K, s):
    """(weights, smoothings, zero-mean filters (K, s, s)) of a fields-of-experts theta
    [theta_0, w (K), l (K), raw filters (K s^2)], as FieldsOfExperts.params reads it."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    raw = theta[1 + 2 * K:].view(K, s * s)
    return (torch.exp(theta[0] + theta[1:1 + K]), torch.exp(theta[1 + K:1 + 2 * K]),
            (raw - raw.mean(dim=1, keepdim=True)).view(K, s, s))
