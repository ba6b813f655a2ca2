"""What the pollers of one account report: each endpoint's health, as
`collector_account_state{account, endpoint, state}`. The pollers decide the states; this
module only keeps the worst per endpoint and exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from collector.metrics import Metrics


class Health(StrEnum):
    """The state of an account endpoint, worst first."""

    CREDENTIALS_REJECTED = "credentials_rejected"
    FAILING = "failing"
    OK = "ok"


@dataclass(slots=True)
class AccountState:
    """Health of an account's endpoints: each endpoint is in the worst state of its scopes, as
    `collector_account_state{account, endpoint, state}` (1 for that state, 0 for the others)."""

    name: str
    metrics: Metrics
    scopes: dict[str, tuple[str, Health]] = field(default_factory=dict)

    def set(self, endpoint: str, scope: str, health: Health) -> None:
        """Scope `scope` of `endpoint` is in state `health` now."""
        if self.scopes.get(scope) == (endpoint, health):
            return
        self.scopes[scope] = (endpoint, health)
        worst = self.of(endpoint)
        for state in Health:
            self.metrics.account_state.labels(self.name, endpoint, state.value).set(
                int(state is worst)
            )

    def of(self, endpoint: str) -> Health | None:
        """The state of `endpoint`: the worst of its scopes' (None before any outcome)."""
        states = {health for e, health in self.scopes.values() if e == endpoint}
        return next((state for state in Health if state in states), None)
