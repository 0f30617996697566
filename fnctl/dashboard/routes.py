"""The dashboard's HTTP side (aiohttp is imported here and in the gateway's HTTP modules only): the shipped
page under /ui/, and the JSON endpoints under /v1/ it reads (docs/ui.md lists them).

Every /v1/ request is authenticated like an invocation (an API key or a JWT in the Authorization header; never
a cookie, so a page elsewhere cannot act with the user's credentials: no CSRF surface), authorised by the `ui`
grant of the live Policies (`access`), audited once in the invocation audit, and answered with a strict
Content-Security-Policy. The page itself is public static files that show the login form until a credential
works; they hold no data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from fnctl.dashboard import live
from fnctl.dashboard.access import Action, granted, may
from fnctl.dashboard.actions import CONSEQUENCES, Actions
from fnctl.dashboard.reads import NoSuchItem, Reads
from fnctl.errors import BadInput, FnctlError, UnknownName
from fnctl.gateway.auth import WWW_AUTHENTICATE, Principal, PrincipalKind, Unauthenticated
from fnctl.gateway.request import Call, request_id

if TYPE_CHECKING:
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.table import TableFollower

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class UiGateway(Protocol):
    """What the dashboard uses of `fnctl.gateway.app.Gateway`."""

    authenticator: Authenticator
    tables: TableFollower
    metrics: Metrics  # the views' hits, misses and invalidations (what /metrics shows)

    async def _finish(
        self, call: Call, request: web.Request | None, response: web.StreamResponse
    ) -> web.StreamResponse: ...


class ActionRefused(FnctlError):
    """An action the command refuses in the rollout's present state (retrying one that was not aborted): 409."""


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


class Dashboard:
    def __init__(self, gateway: UiGateway, reads: Reads, actions: Actions) -> None:
        self.gateway, self.reads, self.actions = gateway, reads, actions
        self.hub = live.Hub()
        gateway.tables.on_change.append(self.hub.changed)
        folder = resources.files("fnctl.dashboard") / "static"
        # Read once: the files are part of the package; only these names are served (no path from the URL).
        self.files = {
            item.name: (item.read_bytes(), _TYPES[item.name[item.name.rfind(".") :]])
            for item in folder.iterdir()
            if item.is_file() and item.name[item.name.rfind(".") :] in _TYPES
        }

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self.redirect)
        r.add_get("/ui/", self.static)
        r.add_get("/ui/{file}", self.static)
        api: dict[str, Handler] = {
            "/v1/ui/session": self.session,
            "/v1/functions": self.functions,
            "/v1/traffic": self.traffic,
            "/v1/audit": self.audit,
            "/v1/functions/{name}": self.function,
            "/v1/functions/{name}/history": self.history,
            "/v1/functions/{name}/diff": self.diff,
            "/v1/functions/{name}/rollout": self.rollout,
            "/v1/functions/{name}/rollout/view": self.rollout_view,
            "/v1/functions/{name}/rollout/stream": self.stream,
            "/v1/functions/{name}/abtest": self.abtest,
            "/v1/triggers": self.triggers,
            "/v1/events": self.events,
            "/v1/events/summary": self.event_counts,
            "/v1/views": self.views,
        }
        for path, handler in api.items():
            r.add_get(path, self._wrap(handler, Action.READ))
        for action in (Action.PROMOTE, Action.ABORT, Action.RETRY, Action.ROLLBACK):
            r.add_post(f"/v1/functions/{{name}}/{action.value}", self._wrap(self._act(action), action))
        r.add_post("/v1/triggers/{trigger}/enable", self._wrap(self.enable, Action.ENABLE))
        r.add_post("/v1/events/replay", self._wrap(self.replay, Action.REPLAY))

        async def closing(_: web.Application) -> None:
            self.hub.close()

        app.on_shutdown.append(closing)

    # ---- the page ----

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/", headers=SECURITY_HEADERS)

    async def static(self, request: web.Request) -> web.StreamResponse:
        found = self.files.get(request.match_info.get("file", "index.html"))
        if found is None:
            return web.Response(status=404, text="Not Found", headers=SECURITY_HEADERS)
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=SECURITY_HEADERS)

    # ---- every /v1/ request: authenticate, authorise, audit ----

    def _wrap(self, handler: Handler, action: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            call = Call(request_id(request), info.get("name", ""), info.get("trigger"), request.remote)
            try:
                principal = self._authorise(request, call, action)
                response = await handler(request, principal)
                call.outcome = "ok"
            except Denied as denied:
                call.outcome = "unauthenticated" if denied.status == 401 else "denied"
                extra = {"WWW-Authenticate": WWW_AUTHENTICATE} if denied.status == 401 else {}
                response = _json({"error": str(denied)}, denied.status, extra)
            except (
                NoSuchItem,
                UnknownName,
            ) as exc:  # UnknownName: the command's own word for a name that does not exist
                call.outcome = "not_found"
                response = _json({"error": str(exc)}, 404)
            except BadInput as exc:
                call.outcome = "rejected"
                response = _json({"error": str(exc)}, 400)
            except FnctlError as exc:  # refused by the command (e.g. nothing to retry): what it says, as a 409
                call.outcome = "rejected"
                response = _json({"error": str(exc)}, 409)
            return await self.gateway._finish(call, request, response)

        return endpoint

    def _authorise(self, request: web.Request, call: Call, action: Action) -> Principal:
        try:
            principal = self.gateway.authenticator.authenticate(request.headers)
        except Unauthenticated:
            raise Denied(401, "sign in: the API key or token was not accepted") from None
        call.principal = principal
        if principal.kind is PrincipalKind.ANONYMOUS:
            raise Denied(401, "sign in with an API key or a token")
        if not may(principal.roles, self._policies(), action):
            raise Denied(403, f"{principal.audit_name} has no `ui: [{action.value}]` grant in any Policy")
        return principal

    def _policies(self) -> Any:
        table = self.gateway.tables.table
        return table.policies if table is not None else {}

    # ---- reads ----

    async def session(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(
            {
                "principal": principal.audit_name,
                "roles": list(principal.roles),
                "granted": granted(principal.roles, self._policies()),
                "consequences": {a.value: text for a, text in CONSEQUENCES.items()},
            }
        )

    async def functions(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.functions))

    async def traffic(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.traffic))

    async def audit(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.audit, dict(request.query)))

    async def function(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.function, request.match_info["name"]))

    async def history(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.history, request.match_info["name"]))

    async def diff(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        numbers = [request.query.get(k, "") for k in ("from", "to")]
        if not all(n.isascii() and n.isdigit() for n in numbers):
            raise BadInput("from and to must be revision numbers")
        name = request.match_info["name"]
        return _json(await asyncio.to_thread(self.reads.spec_diff, name, int(numbers[0]), int(numbers[1])))

    async def rollout(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.rollout, request.match_info["name"]))

    async def rollout_view(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.rollout_view, request.match_info["name"]))

    async def abtest(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.abtest, request.match_info["name"]))

    async def triggers(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.triggers))

    async def events(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.events, dict(request.query)))

    async def event_counts(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        return _json(await asyncio.to_thread(self.reads.event_counts))

    async def views(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        counts = {name: list(c) for name, c in self.gateway.metrics.views.items()}  # a copy, read on the loop
        return _json(await asyncio.to_thread(self.reads.views, counts))

    async def stream(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """Server-sent events: `rollout` with the rollout page's view, now and at every change. Read with
        fetch() (EventSource cannot send the Authorization header)."""
        name = request.match_info["name"]
        views = live.follow(self.hub, lambda: self.reads.change_mark(name), lambda: self.reads.rollout_view(name))
        first = await anext(views)  # a 404 (no rollout) is answered as such, before the stream starts
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
                "X-Request-Id": request_id(request),
            }
        )
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(_event(first))
            async for view in views:
                await response.write(b": keep-alive\n\n" if view is None else _event(view))
        except ConnectionResetError:
            pass  # the page went away
        return response

    # ---- actions ----

    def _act(self, action: Action) -> Handler:
        async def handler(request: web.Request, principal: Principal) -> web.StreamResponse:
            body = await _body(request)
            name = request.match_info["name"]
            try:
                done = await asyncio.to_thread(self.actions.run, action, name, principal.audit_name, body)
            except UnknownName:
                raise
            except BadInput as exc:  # the command refuses in this state (exit 2 on the CLI): a 409, not a 400
                raise ActionRefused(str(exc)) from None
            return _json(done)

        return handler

    async def enable(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """`fnctl enable TRIGGER` as the signed-in principal: the trigger as `fnctl triggers -o json` lists it."""
        trigger = request.match_info["trigger"]
        if trigger not in (t["name"] for t in await asyncio.to_thread(self.reads.triggers)):
            raise NoSuchItem(f"no trigger {trigger!r}")
        return _json(await asyncio.to_thread(self.actions.enable, trigger, principal.audit_name))

    async def replay(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """`fnctl events replay [SEQ...] --trigger TRIGGER` as the signed-in principal: `{trigger, replayed}`."""
        body = await _body(request)
        trigger, seqs = body.get("trigger"), body.get("seqs", [])
        if not isinstance(trigger, str) or not trigger:
            raise BadInput('give the trigger whose dead letters to replay: {"trigger": "NAME"}')
        if not isinstance(seqs, list) or not all(type(n) is int for n in seqs):
            raise BadInput("seqs must be a list of event seqs (whole numbers)")
        return _json(await asyncio.to_thread(self.actions.replay, trigger, seqs, principal.audit_name))


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} without a body)."""
    if not request.body_exists:
        return {}
    try:
        body = json.loads(await request.text())
    except ValueError:
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    return body


def _json(data: Any, status: int = 200, extra: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, default=str).encode(),
        status=status,
        content_type="application/json",
        headers={**SECURITY_HEADERS, **(extra or {})},
    )


def _event(view: dict[str, Any]) -> bytes:
    return b"event: rollout\ndata: " + json.dumps(view, default=str).encode() + b"\n\n"


def mount(project: Any, store_path: Any) -> Callable[[Any], Callable[[web.Application], None]]:
    """For `fnctl.gateway.serve.serve(mounts=...)`: the dashboard on the gateway made there."""

    def on(gateway: Any) -> Callable[[web.Application], None]:
        return Dashboard(gateway, Reads(project, store_path), Actions(project, store_path)).add_routes

    return on
