"""Prometheus metrics, one registry per Receiver. Label values come only from known names: a provider
the registry does not know is counted as "unknown", never under a name taken from a URL."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from receiver.completion import QUANTILES, Models
from receiver.events import parse_iso
from receiver.providers.registry import REGISTRY

UNKNOWN = "unknown"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def known(provider: str) -> str:
    return provider if provider in REGISTRY else UNKNOWN


class StoreCounts(Collector):
    """Jobs by provider and status and deliveries by status, as of the last `update` (the store is
    async and a collector is not, so the /metrics route reads the store first)."""

    def __init__(self) -> None:
        self.jobs: Mapping[tuple[str, str], int] = {}
        self.deliveries: Mapping[str, int] = {}
        self.costs: Mapping[tuple[str, str], float] = {}  # (provider, unit) -> today's cost
        self.budgets: Mapping[tuple[str, str], float] = {}  # (provider, unit) -> daily budget

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "receiver_jobs", "Jobs in the store by provider and status", labels=["provider", "status"]
        )
        for (provider, status), n in sorted(self.jobs.items()):
            jobs.add_metric([provider, status], n)
        yield jobs
        deliveries = GaugeMetricFamily(
            "receiver_deliveries", "Deliveries in the store by status", labels=["status"]
        )
        for status, n in sorted(self.deliveries.items()):
            deliveries.add_metric([status], n)
        yield deliveries
        for name, text, values in (
            ("receiver_cost_today", "What jobs created today (UTC) cost, net of refunds", self.costs),
            ("receiver_daily_budget", "The daily budget per provider (*_DAILY_BUDGET)", self.budgets),
        ):
            family = GaugeMetricFamily(name, text + ", in the provider's unit", labels=["provider", "unit"])
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
            yield family


class CompletionTimes(Collector):
    """The completion-time model of each kind of job, as of the last `update` (receiver/completion.py)."""

    def __init__(self) -> None:
        self.models: Models | None = None

    def collect(self) -> Iterator[Metric]:
        labels = ["provider", "model", "mode", "duration", "audio"]
        seconds = GaugeMetricFamily(
            "receiver_completion_seconds",
            "Seconds from submit to completion by kind of job: the model's quantiles (plan the polls)",
            labels=[*labels, "quantile"],
        )
        samples = GaugeMetricFamily(
            "receiver_completion_samples",
            "Finished jobs the completion-time model of each kind was fit on (below 5: the prior)",
            labels=labels,
        )
        for kind, model in sorted((self.models.kinds if self.models else {}).items()):
            values = [known(kind.provider), kind.model, kind.mode, kind.duration, str(kind.audio).lower()]
            for name, p in QUANTILES.items():
                seconds.add_metric(
                    [*values, name.replace("p", "0.") if p < 0.99 else "0.99"], model.quantile(p)
                )
            samples.add_metric(values, model.samples)
        yield seconds
        yield samples


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store = StoreCounts()
        self.registry.register(self.store)
        self.completion = CompletionTimes()
        self.registry.register(self.completion)
        self.webhooks = Counter(
            "receiver_webhooks",
            "Webhook requests answered, by provider and HTTP status code",
            ["provider", "code"],
            registry=self.registry,
        )
        self._webhook_children: dict[tuple[str, int], Any] = {}
        self.webhook_to_handler = Histogram(
            "receiver_webhook_to_handler_seconds",
            "Seconds from a completion recorded by webhook to a handler's successful delivery",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.polls = Counter(
            "receiver_polls",
            "Status reads by the worker, by provider and outcome (ok, failed)",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.provider_requests = Counter(
            "receiver_provider_requests",
            "HTTP requests sent to providers, by provider and status code (error: no answer)",
            ["provider", "code"],
            registry=self.registry,
        )
        self.provider_rate_limited = Counter(
            "receiver_provider_rate_limited",
            "429 answers from providers",
            ["provider"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "receiver_delivery_attempts",
            "Handler attempts by handler and outcome (delivered, retried, dead)",
            ["handler", "outcome"],
            registry=self.registry,
        )

    def webhook(self, provider: str, code: int) -> None:
        """Count one answered webhook. The labelled child is looked up once per (provider, code):
        `labels()` validates and joins label values each call, which the ingest route cannot afford."""
        key = (known(provider), code)  # never a name taken from the URL: the keys stay few
        child = self._webhook_children.get(key)
        if child is None:
            child = self._webhook_children[key] = self.webhooks.labels(key[0], str(code))
        child.inc()

    def poll(self, provider: str, *, ok: bool) -> None:
        self.polls.labels(known(provider), "ok" if ok else "failed").inc()

    def delivery(self, handler: str, outcome: str, event: Mapping[str, Any], now: datetime) -> None:
        """Count an attempt; a delivered event of a job ended by webhook also times the road."""
        self.deliveries.labels(handler, outcome).inc()
        job = event.get("job") or {}
        completed = parse_iso(job.get("completed_at"))
        if outcome == "delivered" and job.get("completed_via") == "webhook" and completed is not None:
            provider = known(str(job.get("provider")))
            self.webhook_to_handler.labels(provider).observe(max(0.0, (now - completed).total_seconds()))

    def provider_request(self, provider: str, status_code: int | None) -> None:
        """Count one request a provider client sent, by its answer's status (None: no answer)."""
        provider = known(provider)
        self.provider_requests.labels(provider, "error" if status_code is None else str(status_code)).inc()
        if status_code == 429:
            self.provider_rate_limited.labels(provider).inc()

    def render(
        self,
        jobs: Mapping[tuple[str, str], int],
        deliveries: Mapping[str, int],
        costs: Mapping[tuple[str, str], float] | None = None,
        budgets: Mapping[tuple[str, str], float] | None = None,
        models: Models | None = None,
    ) -> bytes:
        """The Prometheus text with the store's counts (today's costs, the budgets and the
        completion-time models) as given."""
        self.store.jobs, self.store.deliveries = jobs, deliveries
        self.store.costs, self.store.budgets = costs or {}, budgets or {}
        self.completion.models = models
        return generate_latest(self.registry)
