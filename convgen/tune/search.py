"""How the tuner chooses the next candidates: a cost model, and two strategies.

`Guided` (the tuner's): coordinate descent from the default recipe's point,
steered by a cost model. Each step measures the unmeasured neighbour (one
knob moved one step, schedule/knobs.py) of the best points found so far
that the model ranks fastest; every fourth step, and whenever the best
points' neighbourhoods are used up, it takes the model's favourite among
all unmeasured points instead, so one good region does not trap it.

The model starts as the analytical estimate from the target description
(knobs.predicted_seconds) and is refined as measurements come in: a ridge
regression of log(measured / estimated) on the points' features, over this
layer's records, corrects it. So it ranks candidates before any is measured
and ranks them better with every one that is.

`Random` is the baseline the guided search is measured against: the default
first, then points drawn uniformly without replacement.

Both are deterministic: the same seed and the same measurements propose the
same candidates in the same order (ties are broken by the seeded generator),
which is also how a rerun replays a killed run's records and continues.
"""

from __future__ import annotations

import math
import random

import numpy as np

from ..schedule.knobs import features, neighbours, predicted_seconds
from ..schedule.space import Config
from ..spec import Spec
from ..target import Target


class Model:
    """Predicted seconds a call of each point: analytical, corrected by measurements."""

    RIDGE = 1.0

    def __init__(self, spec: Spec, target: Target, space: list[Config]):
        self.space = space
        self._estimate = np.array([predicted_seconds(spec, target, p) for p in space])
        self._features = np.array([features(spec, target, p).vector() for p in space])
        self._index = {p: i for i, p in enumerate(space)}
        self._weights = np.zeros(self._features.shape[1])

    def fit(self, measured: dict[Config, float | None]) -> None:
        """Refit the correction on every point measured so far (failed ones carry no time)."""
        timed = [(self._index[p], s) for p, s in measured.items() if s is not None and p in self._index]
        if len(timed) < 2:
            return
        rows = np.array([self._features[i] for i, _ in timed])
        target = np.array([math.log(s / self._estimate[i]) for i, s in timed])
        gram = rows.T @ rows + self.RIDGE * np.eye(rows.shape[1])
        self._weights = np.linalg.solve(gram, rows.T @ target)

    def predict(self, point: Config) -> float:
        i = self._index[point]
        return float(self._estimate[i] * math.exp(self._features[i] @ self._weights))


class Guided:
    name = "guided"

    def __init__(self, spec: Spec, target: Target, space: list[Config], start: Config, seed: int):
        self.space, self.start = space, start
        self.rng = random.Random(seed)
        self.model = Model(spec, target, space)
        self.measured: dict[Config, float | None] = {}
        self._steps = 0

    def tell(self, point: Config, seconds: float | None) -> None:
        self.measured[point] = seconds
        self.model.fit(self.measured)

    def propose(self) -> Config | None:
        """The next point to measure, None when the space is used up."""
        if self.start not in self.measured:
            return self.start
        self._steps += 1
        if self._steps % 4:
            for best in self._best(3):
                local = [p for p in neighbours(best, self.space) if p not in self.measured]
                if local:
                    return self._fastest(local)
        rest = [p for p in self.space if p not in self.measured]
        return self._fastest(rest) if rest else None

    def _best(self, count: int) -> list[Config]:
        timed = sorted((s, i, p) for i, (p, s) in enumerate(self.measured.items()) if s is not None)
        return [p for _, _, p in timed[:count]]

    def _fastest(self, candidates: list[Config]) -> Config:
        self.rng.shuffle(candidates)   # ties fall to the seed
        return min(candidates, key=self.model.predict)


class Random:
    name = "random"

    def __init__(self, spec: Spec, target: Target, space: list[Config], start: Config, seed: int):
        self.start = start
        self.order = list(space)
        random.Random(seed).shuffle(self.order)
        self.measured: dict[Config, float | None] = {}

    def tell(self, point: Config, seconds: float | None) -> None:
        self.measured[point] = seconds

    def propose(self) -> Config | None:
        if self.start not in self.measured:
            return self.start
        return next((p for p in self.order if p not in self.measured), None)


STRATEGIES = {"guided": Guided, "random": Random}
