"""The training schedule of Algorithm 1 (the paper's adversarial training), shared by every
model that can train against the adversarial sampler (NMRN and BPR).

With the adversarial sampler, ``fit`` runs ``epochs`` passes in three phases: the first
``epochs - n_joint`` pre-train the recommender D on uniform negatives (G off), then G is
pre-trained against the frozen D, then the last ``n_joint`` passes are joint (D on G's
negatives, one G step per mini-batch), with ``n_joint = min(adversarial_epochs, epochs)``. With
``n_joint = 0``, G is pre-trained after D's last pass, so that ``learn`` can start joint. Any
other sampler simply runs ``epochs`` passes.

Examples
--------
>>> steps = []
>>> fit_schedule(3, None, lambda e: steps.append(f"epoch {e}"), lambda: steps.append("G"))
>>> steps
['epoch 0', 'epoch 1', 'epoch 2']
"""

from __future__ import annotations

from collections.abc import Callable

from nmrn.sampling import AdversarialSampler, BaseSampler

__all__ = ["fit_schedule"]


def fit_schedule(
    epochs: int,
    sampler: BaseSampler | None,
    run_epoch: Callable[[int], None],
    pretrain_generator: Callable[[], None],
) -> None:
    """Run ``fit``'s passes in Algorithm 1's order.

    Parameters
    ----------
    epochs
        D's passes over the history.
    sampler
        The model's negative sampler (``None``: a model's own negatives). Only an
        :class:`~nmrn.sampling.AdversarialSampler` changes the schedule; its ``training`` flag
        is set to ``False`` for D's pre-training and ``True`` from G's pre-training on.
    run_epoch
        Runs D's pass number ``epoch`` (0-based) over the history.
    pretrain_generator
        Trains G against the frozen D (the sampler's ``pretrain_epochs`` passes).
    """
    if not isinstance(sampler, AdversarialSampler):
        for epoch in range(epochs):
            run_epoch(epoch)
        return
    n_joint = min(sampler.options.adversarial_epochs, epochs)
    sampler.training = False
    for epoch in range(epochs - n_joint):
        run_epoch(epoch)
    sampler.training = True
    pretrain_generator()
    for epoch in range(epochs - n_joint, epochs):
        run_epoch(epoch)
