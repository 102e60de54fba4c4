"""Projects: which quota scope a request counts against (its `X-Project-Id`), with what
priority, and whether its budget use calls for a cheaper model.

A project not listed gets the "default" project's limits in a scope of its own, so a new
name can neither escape limits nor eat another project's allocation. Names come from a
request header, so only `max_projects` of them get scopes; past that, unknown names share
the "default" scope instead of growing state without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache_service.errors import Forbidden
from cache_service.quota.ledger import QuotaLedger
from cache_service.quota.limits import Limits
from cache_service.settings import ProjectSetting, Settings, UpstreamSetting

GLOBAL = ("global", "total")


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    """The scope name it counts against (an unknown name past `max_projects` is "default")."""
    setting: ProjectSetting | None
    """Its own setting, or the "default" project's, or none when no project is configured."""

    @property
    def priority(self) -> int:
        return self.setting.priority if self.setting else 1


def project_limits(p: ProjectSetting) -> Limits:
    return Limits(
        rpm=p.rpm,
        tpm=p.tpm,
        rpd=p.rpd,
        tpd=p.tpd,
        daily_budget_usd=p.daily_budget_usd,
        monthly_budget_usd=p.monthly_budget_usd,
    )


def upstream_limits(u: UpstreamSetting) -> Limits:
    return Limits(rpm=u.rpm, tpm=u.tpm, rpd=u.rpd, tpd=u.tpd)


class Projects:
    def __init__(self, settings: Settings, ledger: QuotaLedger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.configured = {p.name: p for p in settings.projects}
        self._seen: set[str] = set()

    async def configure_all(self) -> None:
        """Every configured scope's limits, into the ledger (at start)."""
        st = self.settings
        await self.ledger.configure(
            *GLOBAL,
            Limits(
                daily_budget_usd=st.total_daily_budget_usd,
                monthly_budget_usd=st.total_monthly_budget_usd,
            ),
        )
        for u in st.upstreams:
            await self.ledger.configure("upstream", u.name, upstream_limits(u))
        for p in st.projects:
            await self.ledger.configure("project", p.name, project_limits(p))

    async def resolve(self, name: str) -> Project:
        setting = self.configured.get(name)
        if setting is None and self.settings.unlisted_projects == "reject":
            raise Forbidden(
                f"project {name!r} is not configured in this sidecar (X-Project-Id)",
                param="X-Project-Id",
                code="unknown_project",
            )
        default = self.configured.get("default")
        if setting is not None or name in self._seen:
            return Project(name, setting or default)
        if len(self._seen) >= self.settings.max_projects:
            return Project("default", default)
        self._seen.add(name)
        if default is not None:
            await self.ledger.configure("project", name, project_limits(default))
        return Project(name, default)

    async def downgrade(self, project: Project, model: str) -> str | None:
        """The cheaper model to call instead, once the project has used the configured share
        of its daily or monthly budget; None to call the model asked for."""
        plan = project.setting.downgrade if project.setting else None
        if plan is None or model == plan.model:
            return None
        use = await self.ledger.scope_use(("project", project.name))
        for budget in (use.daily_budget, use.monthly_budget):
            if budget.limit and budget.used >= plan.at * budget.limit:
                return plan.model
        return None
