"""How long a job takes from submit to its video, per kind of job: a lognormal learned from the store's
finished jobs. Pure: the worker plans its looks with it (receiver/planner.py), `receiver stats` and
/metrics show it.

A kind is (provider, model, mode, duration, audio): a 10 s video in pro mode takes longer than a 5 s one
in standard mode. The fit is robust (median and MAD of the log times: a few jobs stuck for an hour do
not move it) and shrunk towards the prior, a lognormal whose median is RECEIVER_EXPECTED_SECONDS; a
kind with fewer than MIN_SAMPLES finished jobs uses the prior alone.

Jobs still running count too, as censored samples: one running for 200 s took at least 200 s. Without
them, when a batch starts at once the first jobs to finish are the fast ones, and a model fitted on
those alone says the rest are late. Each running job's remaining chance is redistributed over the
times the model gives beyond its age (Efron's redistribute-to-the-right, the idea behind Kaplan-Meier),
and the median/MAD fit is taken again, a few times until it settles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Any

MIN_SAMPLES = 5
PRIOR_WEIGHT = 10  # the prior counts as this many samples in a fit
# The prior's spread: Kling's generation times cluster within about a quarter of their median (log
# scale). A narrower guess would miss late jobs by many looks; the fit replaces it after MIN_SAMPLES.
PRIOR_SIGMA = 0.25
SIGMA_RANGE = (0.05, 2.0)  # a fit outside this is a handful of identical or wildly spread samples
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution is 0.6745 sigma
SHORTEST = 0.01  # seconds: a job ended by a webhook in the same instant still counts, as this
CENSORED_SPREAD = 4  # a running job is redistributed over this many times beyond its age
CENSORED_ROUNDS = 3  # refits with the running jobs redistributed by the previous fit
MAX_SAMPLES = 200  # per kind: the most recent finished jobs, so the model follows the provider's load
_NORMAL = NormalDist()
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(frozen=True, order=True)
class Kind:
    provider: str
    model: str
    mode: str
    duration: str  # the request's duration in seconds, or "default"
    audio: bool

    @classmethod
    def of(cls, provider: str, model: str, request: Mapping[str, Any]) -> Kind:
        duration = request.get("duration")
        return cls(
            provider,
            model,
            str(request.get("mode") or "default"),
            "default" if duration is None else f"{duration:g}s",
            bool(request.get("generate_audio")),
        )

    @property
    def label(self) -> str:
        audio = "audio" if self.audio else "silent"
        return f"{self.provider} {self.model} {self.mode} {self.duration} {audio}"


@dataclass(frozen=True)
class Lognormal:
    """Seconds from submit to completion: log(seconds) ~ Normal(mu, sigma); `samples` it was fit on
    (0 for the prior)."""

    mu: float
    sigma: float
    samples: int = 0

    @classmethod
    def prior(cls, expected: float) -> Lognormal:
        return cls(math.log(max(expected, 0.001)), PRIOR_SIGMA, 0)

    @classmethod
    def fit(cls, seconds: Iterable[float], expected: float, running: Iterable[float] = ()) -> Lognormal:
        """The median/MAD fit of `seconds` (finished jobs) and `running` (the ages of jobs not finished
        yet, censored); the prior while fewer than MIN_SAMPLES have finished."""
        logs = [(math.log(max(s, SHORTEST)), 1.0) for s in seconds]
        prior = cls.prior(expected)
        n = len(logs)
        if n < MIN_SAMPLES:
            return cls(prior.mu, prior.sigma, n)
        model = cls._shrunk(logs, prior)
        ages = [a for a in running if a > 0]
        for _ in range(CENSORED_ROUNDS if ages else 0):
            model = cls._shrunk(logs + model._beyond(ages), prior)
        return model

    @classmethod
    def _shrunk(cls, logs: list[tuple[float, float]], prior: Lognormal) -> Lognormal:
        """The weighted median/MAD of `logs` (log seconds, weight), shrunk towards `prior` as if it
        were PRIOR_WEIGHT samples: the first jobs to finish are the fast ones, so a fit on a few of
        them alone would say the rest are late. `samples` counts the finished jobs (weight 1)."""
        n = sum(1 for _, weight in logs if weight == 1.0)
        mu = _median(logs)
        mad = _median([(abs(x - mu), weight) for x, weight in logs])
        sigma = min(max(MAD_TO_SIGMA * mad, SIGMA_RANGE[0]), SIGMA_RANGE[1])
        w = n / (n + PRIOR_WEIGHT)
        mixed_mu = w * mu + (1 - w) * prior.mu
        spread = w * (sigma**2 + (mu - mixed_mu) ** 2) + (1 - w) * (
            prior.sigma**2 + (prior.mu - mixed_mu) ** 2
        )
        return cls(mixed_mu, math.sqrt(spread), n)

    def _beyond(self, ages: Iterable[float]) -> list[tuple[float, float]]:
        """Each running job as CENSORED_SPREAD log times this model gives past its age, equally likely
        (together worth one job)."""
        spread = []
        for age in ages:
            below = self.cdf(age)
            for i in range(CENSORED_SPREAD):
                p = below + (1.0 - below) * (i + 0.5) / CENSORED_SPREAD
                at = max(age, self.quantile(p)) if p < 1.0 else age
                spread.append((math.log(at), 1.0 / CENSORED_SPREAD))
        return spread

    @property
    def learned(self) -> bool:
        return self.samples >= MIN_SAMPLES

    def cdf(self, seconds: float) -> float:
        """The chance the job has finished `seconds` after submit."""
        if seconds <= 0:
            return 0.0
        return _NORMAL.cdf((math.log(seconds) - self.mu) / self.sigma)

    def survival(self, seconds: float) -> float:
        """The chance the job is still running `seconds` after submit: 1 - cdf, computed as the upper
        tail itself, so it stays exact far past the p99 where 1 - cdf would round to 0."""
        if seconds <= 0:
            return 1.0
        return 0.5 * math.erfc((math.log(seconds) - self.mu) / (self.sigma * math.sqrt(2.0)))

    def quantile(self, p: float) -> float:
        """The time by which a share `p` (0 < p < 1) of such jobs has finished."""
        return math.exp(self.mu + self.sigma * _NORMAL.inv_cdf(p))

    def summary(self) -> dict[str, Any]:
        """What `receiver stats` and /metrics show: samples, source and quantiles in seconds."""
        quantiles = {name: round(self.quantile(p), 3) for name, p in QUANTILES.items()}
        return {"samples": self.samples, "learned": self.learned, **quantiles}


def _median(values: list[tuple[float, float]]) -> float:
    """The weighted median of (value, weight) pairs."""
    ordered = sorted(values)
    half, total = math.fsum(w for _, w in ordered) / 2.0, 0.0
    for i, (value, weight) in enumerate(ordered):
        total += weight
        if math.isclose(total, half) and i + 1 < len(ordered):
            return (value + ordered[i + 1][0]) / 2.0
        if total > half:
            return value
    return ordered[-1][0]


@dataclass(frozen=True)
class Models:
    """The model of every kind seen in the store's history; any other kind gets the prior."""

    expected: float
    kinds: Mapping[Kind, Lognormal]

    def get(self, kind: Kind) -> Lognormal:
        return self.kinds.get(kind) or Lognormal.prior(self.expected)

    @classmethod
    def learn(cls, finished: Iterable[Finished], expected: float, running: Iterable[Running] = ()) -> Models:
        """Fit each kind on its MAX_SAMPLES most recent finished jobs (`finished` newest first) and
        its jobs still running (censored at their age)."""
        by_kind: dict[Kind, list[float]] = {}
        for job in finished:
            seconds = by_kind.setdefault(job.kind, [])
            if len(seconds) < MAX_SAMPLES:
                seconds.append(job.seconds)
        ages: dict[Kind, list[float]] = {}
        for alive in running:
            if alive.kind in by_kind:
                ages.setdefault(alive.kind, []).append(alive.seconds)
        return cls(
            expected,
            {kind: Lognormal.fit(s, expected, ages.get(kind, ())) for kind, s in by_kind.items()},
        )


@dataclass(frozen=True)
class Finished:
    """A job that succeeded: its kind and the seconds from submit to its end (`of`)."""

    kind: Kind
    seconds: float

    @classmethod
    def of(
        cls,
        provider: str,
        model: str,
        request: Mapping[str, Any],
        submitted: datetime,
        completed: datetime,
        finished: datetime | None = None,
    ) -> Finished:
        """From submit to `finished`, when the provider said when the job ended, else to `completed`,
        when the receiver recorded the end: a webhook that came late, or a reconciliation poll long
        after it, would teach the model the receiver's delay and set the next reconciliation later
        still. The provider's moment is on its clock: it is kept between submit and the record."""
        end = completed if finished is None else min(max(finished, submitted), completed)
        return cls(Kind.of(provider, model, request), (end - submitted).total_seconds())


@dataclass(frozen=True)
class Running:
    """A job not finished yet: its kind and its age, the seconds since submit (a censored sample)."""

    kind: Kind
    seconds: float
