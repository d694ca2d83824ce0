r"""SAGA variance reduction of minibatch hypergradients (``maid_sgd``'s ``variance_reduction``).

A batch's hypergradient z_B = (1/|B|) sum_{i in B} G_i, G_i = grad_theta g_i(x_i*(theta)) the
hypergradient of sample i's own loss, estimates grad F = (1/N) sum_i G_i without bias, but
with the noise of sampling: on the 24x13x13 ridge the batches' directions differ from their
mean by 150% while each is solved to 1e-2 of its own (docs/denoisers.md, stop 39).  SAGA
(Defazio, Bach and Lacoste-Julien, NeurIPS 2014), the outer-variable half of SABA (Dagreou,
Ablin, Vaiter and Moreau, NeurIPS 2022), keeps T_i, the last G_i computed for each sample,
and steps along

    v = z_B - (1/|B|) sum_{i in B} T_i + (1/N) sum_i T_i,

still an unbiased estimate of grad F (the expectation of the middle term over B is the last),
whose variance is that of G_i(theta) - T_i: it vanishes as the thetas the table was filled at
approach the current one.  SABA also reduces the variance of its inner and adjoint updates;
here each batch's lower level and adjoint are solved to the accuracy asked, from each sample's
warm start, so only the outer direction needs it.  The first epoch fills the table and steps
along z_B (a partly filled table would bias v towards zero).

G_i comes from the batch's own solution and adjoint, without another solve: the problem on
sample i alone (``subset([i], total=1)``, g = g_i) has the adjoint |B| q_i when q_i is the
batch's (g_B = g_i / |B| + ...), so G_i = grad_theta g_i - B_i(x_i)^T (|B| q_i); their mean
over the batch is z_B (a test checks it).  Data parallel: each rank keeps the rows of its own
samples, and the two means go through ``problem.parallel``.
"""
from __future__ import annotations

import torch


def sample_hypergradients(batch, theta, x, q, total: int) -> torch.Tensor:
    """(samples here, dim theta): G_i of each sample of ``batch`` (``total`` samples over all
    ranks), from the batch's lower-level solutions ``x`` and adjoints ``q`` (stacked by
    sample)."""
    rows = []
    for i in range(x.shape[0]):
        one = batch.subset([i], 1)
        _, _, gt = one.upper_grads(x[i:i + 1], theta)
        rows.append(gt - one.mixed_vjp(x[i:i + 1], theta, total * q[i:i + 1]))
    return torch.stack(rows)


def saga_direction(z, shares, table, index, parallel, sizes, epoch: int):
    """(v, the table after this batch): SAGA's direction (module docstring) from the batch's
    z (over all ranks) and its samples' G_i ``shares`` (this rank's: rows ``index`` of the
    ``table`` of this rank's samples, None before the first batch).  ``sizes``: (samples
    here, samples over all ranks, the batch over all ranks).  z itself in the first epoch
    (``epoch`` 0: the table is not full yet)."""
    n, n_all, total = sizes
    if table is None:
        table = torch.zeros(n, shares.shape[1], dtype=shares.dtype, device=shares.device)
    if epoch == 0:
        v = z
    else:
        old = parallel.sum(table[index].sum(dim=0)) / total
        v = z - old + parallel.sum(table.sum(dim=0)) / n_all
    table = table.clone()
    table[index] = shares
    return v, table
