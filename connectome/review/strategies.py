"""How a queue is picked from the candidates (:mod:`.candidates`): a small registry of
strategy functions ``f(candidates, count, rng) -> list of candidate indices``, best first.

* ``uncertainty``: highest score first (ties: the candidate listed first);
* ``random``: the control: a uniformly random order from the seeded ``rng``.

Where the candidates are ``exclusive`` (vessel boxes), a candidate whose box overlaps one
already picked is skipped, so no voxel is reviewed twice. Add a strategy with
``@register("name")``; ``connectome review plan --strategy`` offers every registered name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from connectome.errors import UserInputError

STRATEGIES: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        STRATEGIES[name] = fn
        return fn

    return deco


def get(name: str) -> Callable:
    if name not in STRATEGIES:
        raise UserInputError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def take(cands, order, count: int) -> list[int]:
    """The first ``count`` of ``order``, skipping boxes that overlap a picked one if exclusive."""
    if not cands.exclusive:
        return [int(i) for i in order[:count]]
    picked: list[int] = []
    lo = np.empty((0, 3), np.int64)
    hi = np.empty((0, 3), np.int64)
    for i in order:
        b = cands.boxes[i]
        if len(picked) and np.any(np.all((lo < b[3:]) & (b[:3] < hi), axis=1)):
            continue
        picked.append(int(i))
        lo, hi = np.vstack([lo, b[:3]]), np.vstack([hi, b[3:]])
        if len(picked) >= count:
            break
    return picked


@register("uncertainty")
def uncertainty(cands, count: int, rng) -> list[int]:
    order = np.argsort(-cands.scores, kind="stable")
    return take(cands, order, count)


@register("random")
def random(cands, count: int, rng) -> list[int]:
    return take(cands, rng.permutation(len(cands)), count)
