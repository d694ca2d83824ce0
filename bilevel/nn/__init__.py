"""Networks and their pieces: none of this is bilevel, and ``import bilevel`` does not load it.

splines
    Learned linear-spline activations (:class:`~bilevel.nn.splines.LinearSpline`)
    and the smoothed monotone splines the ridge regularizer uses as potentials.
lipschitz
    Lipschitz constants of networks: estimates from data, lower bounds and
    certified upper bounds.
lipschitz_training
    Lipschitz-regularised regression with networks, and the exact 1-D fit.
"""
