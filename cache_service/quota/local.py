"""The in-process quota ledger: the pure `QuotaManager` in this process's memory, with spend
made durable by a write-ahead journal and periodic snapshots, and alerts when a limit's
threshold is crossed.

Durability: every hold and settlement is appended to the journal (one `write` each) before
the request goes on; a snapshot (`spend.json`, fsync + atomic replace) is taken every
`interval_s` from the event loop's state, after which the journal it covers is dropped. A
restart, or a SIGKILL, resumes from the snapshot plus the journal after it; a request in
flight at the crash counts at its estimate (upstream may have billed it). Limits changed at
run time are in the snapshot too (taken within `interval_s` of the change), so a restart
keeps them over the same configuration (the ledger protocol's rule).

Single-threaded like the manager: every method runs on the event loop, and none awaits
between reading and changing the state, so each is atomic there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from cache_service.backends.journal import SpendJournal
from cache_service.backends.jsonfile import JsonFile
from cache_service.protocols import Clock
from cache_service.quota.alerts import AlertSink, AlertTracker, payload
from cache_service.quota.ledger import Held
from cache_service.quota.limits import Denial, Limits, Scope
from cache_service.quota.manager import QuotaManager, Reservation
from cache_service.quota.usage import QuotaSnapshot, ScopeUse

log = logging.getLogger("cache_service.quota")


def saved_run_time_limits(saved: dict[str, Any]) -> list[tuple[Scope, Limits, Limits | None]]:
    """The limits changed at run time that a spend file holds: each scope's, and the
    configuration's they were set over (None: none yet). ValueError if they are malformed."""
    try:
        return [
            (
                (str(row["kind"]), str(row["name"])),
                Limits(**row["limits"]),
                None if row.get("configured") is None else Limits(**row["configured"]),
            )
            for row in saved.get("run_time_limits", [])
        ]
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"malformed run_time_limits: {e!r}") from e


class LocalLedger:
    def __init__(
        self,
        clock: Clock,
        *,
        alert_thresholds: Sequence[float] = (0.8, 0.95),
        snapshot_file: JsonFile | None = None,
        journal: SpendJournal | None = None,
        on_alert: AlertSink | None = None,
    ) -> None:
        self.manager = QuotaManager(clock)
        self.alerts = AlertTracker(alert_thresholds)
        self.snapshot_file = snapshot_file
        self.journal = journal
        self.on_alert = on_alert
        self._open: dict[str, Reservation] = {}
        self._dirty = False
        self._configured: dict[Scope, Limits] = {}
        """The configuration's limits last applied to each scope."""
        self._changed_at_run_time: set[Scope] = set()
        if snapshot_file is not None:
            self._recover(snapshot_file)

    # ------------------------------------------------------------------ the ledger protocol

    async def reserve(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Held | Denial:
        result = self.manager.reserve(scopes, tokens, cost_usd)
        if isinstance(result, Denial):
            return result
        held = Held(str(result.id), result.scopes, result.tokens, result.cost_usd)
        self._open[held.id] = result
        return held

    async def check(self, scopes: Sequence[Scope], tokens: int, cost_usd: float) -> Denial | None:
        return self.manager.check(scopes, tokens, cost_usd)

    async def settle(self, held: Held, tokens: int, cost_usd: float) -> None:
        reservation = self._open.pop(held.id, None)
        if reservation is None:
            return
        self.manager.settle(reservation, tokens, cost_usd)
        self._after_spend()

    async def release(self, held: Held) -> None:
        reservation = self._open.pop(held.id, None)
        if reservation is None:
            return
        self.manager.release(reservation)
        # Nothing spent, but the journal took a hold and its release: a snapshot lets it
        # drop them, or an upstream that only ever fails would grow the journal for good.
        self._dirty = True

    async def configure(
        self, kind: str, name: str, limits: Limits, *, at_run_time: bool = False
    ) -> Limits:
        scope = (kind, name)
        if at_run_time:
            self._changed_at_run_time.add(scope)
            self._dirty = True
        else:
            # The protocol's rule: an operator's change outlives the same configuration
            # applied again (here, a project's first request gets the "default" project's).
            last, self._configured[scope] = self._configured.get(scope), limits
            if scope in self._changed_at_run_time:
                if last in (None, limits):
                    return self.manager.limits(kind, name)
                self._changed_at_run_time.discard(scope)
                self._dirty = True
        self.manager.configure(kind, name, limits)
        return limits

    async def scope_use(self, scope: Scope) -> ScopeUse:
        return self.manager.scope_snapshot(scope)

    async def snapshot(self) -> QuotaSnapshot:
        return self.manager.snapshot()

    async def ratelimit_headers(self, scope: Scope) -> dict[str, str]:
        return self.manager.ratelimit_headers(scope)

    # ------------------------------------------------------------------ alerts

    def _after_spend(self) -> None:
        for alert in self.manager.check_alerts(self.alerts):
            told = payload(alert)
            log.warning(alert.message, extra={"alert": told})  # "message" is reserved
            if self.on_alert is not None:
                asyncio.get_running_loop().create_task(self.on_alert(told))
        self._dirty = True

    # ------------------------------------------------------------------ durability

    def _recover(self, snapshot_file: JsonFile) -> None:
        """Spend as of the last snapshot plus what the journal recorded after it. The result
        is written as a new snapshot at once, before any new journal segment is opened, so a
        crash at any point here leaves either the old pair or the new one."""
        saved = snapshot_file.load()
        covered = int(saved.get("journal_seq", 0))
        events, last = self.journal.recover(after=covered) if self.journal else ([], covered)
        if saved or events:
            self.manager.restore_spend(saved.get("spend"), events)
            self.alerts.import_fired(saved.get("alerts", []))
        try:
            changed = saved_run_time_limits(saved)
        except ValueError:
            # Spend matters more than these: the start goes on, with the config's limits.
            log.exception("limits changed at run time unreadable in the spend file; ignored")
            changed = []
        for scope, limits, configured in changed:
            self.manager.configure(*scope, limits)
            self._changed_at_run_time.add(scope)
            if configured is not None:
                self._configured[scope] = configured
        if self.journal is None:
            return
        if events:
            log.info("spend recovered from journal", extra={"events": len(events)})
        if last > covered:
            snapshot_file.save(self._snapshot(last))
        self.journal.start(last + 1)
        self.manager.on_spend = self.journal.append

    async def persist_forever(self, interval_s: float = 1.0) -> None:
        """Snapshot spend at most once per interval, written off the event loop: an fsync
        per request would cost more than the request. The journal holds what happened since."""
        while True:
            await asyncio.sleep(interval_s)
            checkpoint = self._checkpoint()
            if checkpoint is None:
                continue
            try:
                await asyncio.to_thread(self._write_checkpoint, *checkpoint)
            except OSError:
                # The journal segments stay until a snapshot covering them is written, so
                # nothing is lost; try again next time instead of ending the task.
                log.exception("spend snapshot failed; retrying")
                self._dirty = True

    def close(self) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            self._write_checkpoint(*checkpoint)
        if self.journal is not None:
            self.journal.close()

    def _checkpoint(self) -> tuple[dict[str, Any], int] | None:
        """Spend now and the journal segment it covers, taken together on the event loop so
        no event falls between them."""
        if self.snapshot_file is None or not self._dirty:
            return None
        self._dirty = False
        covered = self.journal.rotate() if self.journal is not None else 0
        return self._snapshot(covered), covered

    def _write_checkpoint(self, data: dict[str, Any], covered: int) -> None:
        assert self.snapshot_file is not None
        self.snapshot_file.save(data)
        if self.journal is not None:
            self.journal.remove_through(covered)

    def _snapshot(self, journal_seq: int) -> dict[str, Any]:
        """What the spend file holds: spend, fired alerts, the last journal segment already
        counted in them, and the limits changed at run time (with the configuration's that
        they were set over)."""
        return {
            "spend": self.manager.export_spend(),
            "alerts": self.alerts.export_fired(),
            "journal_seq": journal_seq,
            "run_time_limits": [self._run_time_row(s) for s in sorted(self._changed_at_run_time)],
        }

    def _run_time_row(self, scope: Scope) -> dict[str, Any]:
        configured = self._configured.get(scope)
        return {
            "kind": scope[0],
            "name": scope[1],
            "limits": asdict(self.manager.limits(*scope)),
            "configured": None if configured is None else asdict(configured),
        }
