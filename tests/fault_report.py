"""The fault-injection suite's ledger, printed at the end of the test session.

Fault tests record what they actually did through the `fault_ledger` fixture: each bad input tried
(and refused), each fault injected (and survived), and, after comparing storage before and after,
how many objects were lost. The summary shows the totals; "objects lost" must read 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

__all__ = ["FaultLedger", "fault_ledger"]


@dataclass
class FaultLedger:
    bad_inputs: list[str] = field(default_factory=list)  # refused with an error naming it
    faults_survived: list[str] = field(default_factory=list)  # injected, and the pipeline recovered
    objects_compared: int = 0  # storage objects checked after a fault or a refused input
    objects_lost: list[str] = field(default_factory=list)  # objects missing or changed afterwards

    def refused(self, kind: str) -> None:
        self.bad_inputs.append(kind)

    def survived(self, fault: str) -> None:
        self.faults_survived.append(fault)

    def compared(self, before: dict[str, bytes], after: dict[str, bytes], may_change: set[str]) -> None:
        """Count `before`'s objects; those gone or altered in `after` (outside `may_change`) are lost."""
        self.objects_compared += len(before)
        self.objects_lost += [
            key for key, data in before.items() if key not in may_change and after.get(key) != data
        ]

    def merge(self, other: dict[str, Any]) -> None:
        """Add a pytest-xdist worker's ledger (`asdict` of its FaultLedger) to this one."""
        self.bad_inputs += other["bad_inputs"]
        self.faults_survived += other["faults_survived"]
        self.objects_compared += other["objects_compared"]
        self.objects_lost += other["objects_lost"]

    def is_empty(self) -> bool:
        return not (self.bad_inputs or self.faults_survived or self.objects_compared)


_LEDGER = FaultLedger()


@pytest.fixture(scope="session")
def fault_ledger() -> FaultLedger:
    return _LEDGER


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker: hand this worker's ledger to the controller, which prints it."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["fault_ledger"] = json.dumps(asdict(_LEDGER))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # pytest-xdist's hook, on the controller
    ledger = getattr(node, "workeroutput", {}).get("fault_ledger")
    if ledger:
        _LEDGER.merge(json.loads(ledger))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEDGER.is_empty():
        return  # no fault test ran in this session
    write = terminalreporter.write_line
    terminalreporter.section("fault injection summary")
    kinds = sorted(set(_LEDGER.bad_inputs))
    write(f"bad inputs tried and refused: {len(kinds)} kinds ({', '.join(kinds)})")
    faults = sorted(set(_LEDGER.faults_survived))
    write(f"faults injected and survived: {len(_LEDGER.faults_survived)} ({', '.join(faults)})")
    write(f"storage objects compared: {_LEDGER.objects_compared}")
    write(
        f"objects lost: {len(_LEDGER.objects_lost)}"
        + (f" {_LEDGER.objects_lost}" if _LEDGER.objects_lost else "")
    )
