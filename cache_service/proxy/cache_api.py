"""The cache-lookup API's door to the cache (`/v1/cache/lookup`, `/v1/cache/store`,
invalidation): the same lookup, store and recorder as proxied requests, under a scope of its
own (`api=lookup`), since what an app stores here is whatever shape it likes and must never
be served as a chat completion. Every call acts within the caller's own tenant (the
`namespace` it names partitions inside it); only the admin key reaches across tenants."""

from __future__ import annotations

import asyncio
from typing import Any

from cache_service.api.schemas import LookupRequest, StoreRequest
from cache_service.cache.front import CacheFront
from cache_service.cache.keys import ANSWER_PARAMS, RequestKeys, build_keys, project_of
from cache_service.cache.policy import parse_directives
from cache_service.cache.tenancy import Caller, Tenancy, namespace_of
from cache_service.errors import BadRequest, ServiceError
from cache_service.flavors import DEFAULT
from cache_service.pricing import Usage
from cache_service.protocols import Clock, Entry
from cache_service.proxy.context import RequestContext, directives_of, parse_threshold
from cache_service.proxy.recorder import Recorder
from cache_service.settings import Settings
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.stats import Outcome


class StoreFailed(ServiceError):
    status = 503
    type = "server_error"
    code = "store_failed"


class CacheAPI:
    def __init__(
        self,
        front: CacheFront,
        recorder: Recorder,
        metrics: Metrics,
        settings: Settings,
        clock: Clock,
        tenancy: Tenancy,
    ) -> None:
        self.tenancy = tenancy
        self.front = front
        self.recorder = recorder
        self.metrics = metrics
        self.settings = settings
        self.clock = clock

    def keys(
        self, req: LookupRequest | StoreRequest, headers: dict[str, str], caller: Caller
    ) -> RequestKeys:
        if (req.messages is None) == (req.prompt is None):
            raise BadRequest("give exactly one of 'messages' or 'prompt'", param="messages")
        messages = (
            [m.model_dump(exclude_none=True) for m in req.messages]
            if req.messages is not None
            else [{"role": "user", "content": req.prompt}]
        )
        extra = req.model_extra or {}
        body = {"model": req.model, "messages": messages}
        body.update({k: extra[k] for k in ANSWER_PARAMS if k in extra})
        return build_keys(
            body,
            self.tenancy.tenant(caller, req.namespace or namespace_of(headers)),
            api="lookup",
            max_semantic_chars=self.settings.semantic_max_chars,
        )

    async def lookup(
        self,
        req: LookupRequest,
        data: dict[str, Any],
        headers: dict[str, str],
        request_id: str,
        caller: Caller,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        threshold = parse_threshold(
            req.threshold, param="threshold", floor=self.settings.min_threshold
        )
        keys = self.keys(req, headers, caller)
        ctx = RequestContext(
            flavor=DEFAULT,
            body=data,
            request=None,
            headers=headers,
            keys=keys,
            directives=directives_of(headers, self.settings),
            threshold=threshold,
            request_id=request_id,
            project=project_of(headers),
        )
        ctx.found = found = await self.front.lookup(keys, threshold, ctx.stages)
        hit = found.hit
        if hit is None or hit.entry is None:
            self.recorder.record(ctx, Outcome.MISS)
            searched = found.searched
            return {
                "hit": False,
                "namespace": keys.tenant,
                "best_similarity": searched.best_rejected if searched else None,
                "reason": searched.reason if searched else "no_candidates",
            }, {}
        entry = hit.entry
        outcome = Outcome.EXACT_HIT if hit.match == "exact" else Outcome.SEMANTIC_HIT
        self.recorder.record(ctx, outcome, entry.saved_usage())
        view = self.entry_view(entry)
        body = {
            "hit": True,
            "match": hit.match,
            "similarity": hit.similarity,
            "entry_id": entry.id,
            "age": view["age"],
            "namespace": entry.namespace,
            # Stored wrapped (entries hold an object); the app gets back exactly what it stored.
            "response": entry.response.get("value"),
            "entry": view,
        }
        return body, {"x-cache": "HIT", "x-cache-entry": entry.id}

    async def store(self, req: StoreRequest, headers: dict[str, str], caller: Caller) -> Entry:
        keys = self.keys(req, headers, caller)
        ttl = parse_directives(
            None,
            None if req.ttl is None else str(req.ttl),
            default_ttl_s=self.settings.default_ttl_s,
            max_ttl_s=self.settings.max_ttl_s,
        ).ttl_s
        entry = await self.front.store(
            keys,
            {"value": req.response},
            api="lookup",
            ttl_s=ttl,
            usage=Usage(req.prompt_tokens, req.completion_tokens),
        )
        if entry is None:
            raise StoreFailed("the entry could not be stored; try again")
        return entry

    async def delete(self, entry_id: str, caller: Caller) -> bool:
        """Invalidate one entry of the caller's (another tenant's is "not found": its
        existence is not the caller's business)."""
        cache = self.front.cache
        entry = await asyncio.to_thread(cache.store.get, entry_id)
        if entry is None or not self.tenancy.owns(caller, entry.namespace):
            return False
        if await asyncio.to_thread(cache.delete, entry_id) is None:
            return False
        self.metrics.evicted(1)
        return True

    async def delete_where(self, namespace: str | None, model: str | None, caller: Caller) -> int:
        """Invalidate by namespace and/or model: within the caller's tenant; with the admin
        key, across every tenant (a bare namespace then names it in every tenant)."""
        tenancy = self.tenancy

        def doomed(entry: Entry) -> bool:
            if model is not None and entry.model != model:
                return False
            if caller.admin:
                return namespace is None or namespace in (
                    entry.namespace,
                    entry.namespace.split("/", 1)[-1],
                )
            if namespace is not None:
                return entry.namespace == tenancy.tenant(caller, namespace)
            return tenancy.owns(caller, entry.namespace)

        if namespace is not None and not caller.admin:
            tenancy.tenant(caller, namespace)  # a malformed name is a 400, not "0 deleted"
        count = await asyncio.to_thread(self.front.cache.delete_matching, doomed)
        self.metrics.evicted(count)
        return count

    def entry_view(self, entry: Entry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "namespace": entry.namespace,
            "model": entry.model,
            "prompt": entry.prompt,
            "created": entry.created,
            "expires": entry.expires,
            "age": max(0.0, self.clock.now() - entry.created),
            "usage": {
                "prompt_tokens": entry.prompt_tokens,
                "completion_tokens": entry.completion_tokens,
            },
        }
