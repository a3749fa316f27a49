"""HTTP layer of the sandbox API server: URL routing, discovery, content negotiation, watch streams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import yaml
from aiohttp import web

from mnv2_operator.sandbox import protobuf, table
from mnv2_operator.sandbox.catalog import ResourceInfo
from mnv2_operator.sandbox.selectors import SelectorError, parse_field_selector, parse_label_selector
from mnv2_operator.sandbox.server import SERVER_VERSION, ApiError, ApiServer, AuditRecord, Watcher, output

JSON = "application/json"
log = logging.getLogger(__name__)
AUDITED = web.RequestKey("mnv2_sandbox_audited", bool)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _respond(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    headers = {}
    if warnings:
        headers["Warning"] = ", ".join(f'299 - "{w}"' for w in warnings)
    return web.Response(body=_dumps(obj), status=status, content_type=JSON, headers=headers)


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0]
    return "as=Table" in first


class Route:
    """A parsed resource URL."""

    def __init__(
        self, info: ResourceInfo, version: str, namespace: str | None, name: str | None, sub: str, watch: bool
    ):
        self.info, self.version, self.namespace, self.name, self.sub, self.watch = (
            info,
            version,
            namespace,
            name,
            sub,
            watch,
        )


def parse_route(server: ApiServer, path: str) -> Route | None:
    seg = [s for s in path.split("/") if s]
    if len(seg) >= 3 and seg[0] == "api":
        group, version, rest = "", seg[1], seg[2:]
    elif len(seg) >= 4 and seg[0] == "apis":
        group, version, rest = seg[1], seg[2], seg[3:]
    else:
        return None
    watch = False
    if rest and rest[0] == "watch":
        watch, rest = True, rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        cand = server.find(group, version, rest[2])
        if cand is not None and cand.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    info = server.find(group, version, rest[0])
    if info is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in info.subresources:
        return None
    return Route(info, version, namespace, name, sub, watch)


class Handler:
    """aiohttp request handler bound to one ApiServer."""

    def __init__(self, server: ApiServer):
        self.server = server
        self.closing = False
        self.streams: set[Watcher] = set()

    # ---- discovery -------------------------------------------------------------------------------

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for info in self.server.resources.values():
            if not info.group:
                continue
            vs = groups.setdefault(info.group, [])
            for v in info.versions:
                if v not in vs:
                    vs.append(v)
        return groups

    def _api_group(self, group: str, versions: list[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": vs, "preferredVersion": vs[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        entries = []
        for info in self.server.resources.values():
            if info.group == group and version in info.versions:
                entries.extend(info.discovery_entries())
        if not entries:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": entries,
        }

    def discovery(self, path: str) -> web.Response | None:
        seg = [s for s in path.split("/") if s]
        if not seg:
            return _respond(
                {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]}
            )
        if seg == ["version"]:
            return _respond(SERVER_VERSION)
        if seg[0] in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        if seg == ["api"]:
            return _respond({"kind": "APIVersions", "versions": ["v1"],
                             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.server.port}"}]})  # fmt: skip
        if seg == ["api", "v1"]:
            return _respond(self._resource_list("", "v1"))
        if seg == ["apis"]:
            groups = [self._api_group(g, vs) for g, vs in self._group_versions().items()]
            return _respond({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if seg[0] == "apis" and len(seg) == 2:
            vs = self._group_versions().get(seg[1])
            if vs is None:
                return None
            return _respond({"kind": "APIGroup", "apiVersion": "v1", **self._api_group(seg[1], vs)})
        if seg[0] == "apis" and len(seg) == 3:
            doc = self._resource_list(seg[1], seg[2])
            return _respond(doc) if doc else None
        if seg == ["openapi", "v3"]:
            return _respond(
                {
                    "paths": {
                        p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={h}"}
                        for p, h in self._openapi_gvs().items()
                    }
                }
            )
        if seg[:2] == ["openapi", "v3"] and len(seg) > 2:
            doc = self._openapi_doc("/".join(seg[2:]))
            return _respond(doc) if doc else None
        return None

    def _openapi_gvs(self) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        for info in self.server.resources.values():
            for v in info.versions:
                path = f"apis/{info.group}/{v}" if info.group else f"api/{v}"
                out.setdefault(path, []).append(f"{info.plural}:{info.kind}:{len(info.schemas)}")
        return {
            p: hashlib.sha256(",".join(sorted(v)).encode()).hexdigest()[:16].upper() for p, v in out.items()
        }

    def _openapi_doc(self, gv_path: str) -> dict[str, Any] | None:
        """A minimal OpenAPI v3 document per group/version.

        kubectl reads it only to learn that PATCH takes `fieldValidation` (then it leaves validation
        to the server instead of downloading schemas). Schemas are not served: `kubectl explain`
        does not work against the sandbox.
        """
        seg = gv_path.split("/")
        if seg[0] == "api" and len(seg) == 2:
            group, version = "", seg[1]
        elif seg[0] == "apis" and len(seg) == 3:
            group, version = seg[1], seg[2]
        else:
            return None
        params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for n in ("dryRun", "fieldManager", "fieldValidation", "force")]  # fmt: skip
        paths: dict[str, Any] = {}
        for info in self.server.resources.values():
            if info.group != group or version not in info.versions:
                continue
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            scope = "/namespaces/{namespace}" if info.namespaced else ""
            gvk = {"group": group, "version": version, "kind": info.kind}
            op = {"operationId": f"patch{info.kind}", "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": params,
                  "responses": {"200": {"description": "OK"}}}  # fmt: skip
            paths[f"{prefix}{scope}/{info.plural}/{{name}}"] = {"parameters": params, "patch": op}
            if "status" in info.subresources:
                paths[f"{prefix}{scope}/{info.plural}/{{name}}/status"] = {
                    "parameters": params,
                    "patch": dict(op, operationId=f"patch{info.kind}Status"),
                }
        if not paths:
            return None
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": {}},
        }

    # ---- dispatch --------------------------------------------------------------------------------

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        route = parse_route(self.server, path)
        if route is None:
            if request.method == "GET":
                doc = self.discovery(path)
                if doc is not None:
                    return doc
            return _respond(
                ApiError(404, "NotFound", "the server could not find the requested resource").status(), 404
            )
        params = dict(request.query)
        verb = self._verb(request.method, route, params)
        code = 500
        try:
            resp = await self._dispatch(request, route, verb, params)
            code = resp.status
            return resp
        except ApiError as e:
            code = e.code
            return _respond(e.status(), e.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # a sandbox bug: answer like the apiserver does, with the cause
            log.exception("sandbox API server: %s %s failed", request.method, request.path_qs)
            err = ApiError(
                500, "InternalError", f"Internal error occurred: sandbox API server: {type(e).__name__}: {e}"
            )
            return _respond(err.status(), 500)
        finally:
            if not request.get(AUDITED):
                self._audit(request, route, verb, code)

    def _audit(self, request: web.Request, r: Route, verb: str, code: int) -> None:
        request[AUDITED] = True
        self.server.audit.append(
            AuditRecord(
                verb, r.info.group, r.version, r.info.plural, r.sub, r.namespace or "", r.name or "", code
            )
        )

    @staticmethod
    def _verb(method: str, route: Route, params: dict[str, str]) -> str:
        if method == "GET":
            if route.watch or params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(
            method, ("delete" if route.name else "deletecollection") if method == "DELETE" else method.lower()
        )

    async def _body(self, request: web.Request, info: ResourceInfo | None = None, kind: str = "") -> Any:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", JSON)
        if "protobuf" in ctype:
            if not raw:
                return None
            try:
                obj = protobuf.decode_object(raw, kind or (info.kind if info else ""))
            except protobuf.ProtobufError as e:
                if info is not None and info.group == "authorization.k8s.io":
                    return {"kind": info.kind, "spec": {}}  # access reviews are answered without reading them
                raise ApiError(415, "UnsupportedMediaType", str(e)) from None
            if info is not None and not kind:
                obj["apiVersion"] = info.group_version()
            return obj
        if not raw:
            return None
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the request body could not be decoded: {e}") from None

    async def _dispatch(
        self, request: web.Request, r: Route, verb: str, params: dict[str, str]
    ) -> web.StreamResponse:
        s, info = self.server, r.info
        ns = r.namespace if info.namespaced else ""
        if info.namespaced and r.name is not None and r.namespace is None and verb not in ("watch",):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        warnings: list[str] = []
        if verb == "get":
            if r.sub == "log":
                return await self._logs(request, r, params)
            obj = s.get(info, ns or "", r.name or "")
            if obj is None:
                raise _nf(info, r.name or "")
            if _wants_table(request):
                return _respond(
                    table.build_table(
                        info.plural,
                        [output(obj, info, r.version)],
                        _columns(info, r.version),
                        str(s.rv),
                        params.get("includeObject", "Metadata"),
                    )
                )
            return _respond(output(obj, info, r.version))
        if verb == "list":
            items, cont = s.list_objects(info, r.namespace, params)
            items = [output(o, info, r.version) for o in items]
            if _wants_table(request):
                t = table.build_table(
                    info.plural,
                    items,
                    _columns(info, r.version),
                    str(s.rv),
                    params.get("includeObject", "Metadata"),
                )
                if cont:
                    t["metadata"]["continue"] = cont
                return _respond(t)
            meta: dict[str, Any] = {"resourceVersion": str(s.rv)}
            if cont:
                meta["continue"] = cont
            return _respond(
                {
                    "kind": info.list_kind,
                    "apiVersion": info.group_version(r.version),
                    "metadata": meta,
                    "items": items,
                }
            )
        if verb == "watch":
            return await self._watch(request, r, params)
        if verb == "create":
            if r.name is not None:
                raise ApiError(
                    405, "MethodNotAllowed", f"create is not supported on {info.qualified}/{r.sub or r.name}"
                )
            body = await self._body(request, info)
            obj = s.create_object(info, ns or "", body, params, warnings)
            return _respond(output(obj, info, r.version), 201, warnings)
        if verb == "update":
            body = await self._body(request, info)
            obj = s.update_object(info, ns or "", r.name or "", body, r.sub, params, warnings)
            return _respond(output(obj, info, r.version), 200, warnings)
        if verb == "patch":
            raw = await request.read()
            code, obj = s.patch_object(
                info,
                ns or "",
                r.name or "",
                request.headers.get("Content-Type", ""),
                raw,
                r.sub,
                params,
                warnings,
            )
            return _respond(output(obj, info, r.version), code, warnings)
        if verb == "delete":
            opts = await self._body(request, kind="DeleteOptions") or {}
            opts = {**opts, **_delete_params(params)}
            obj = s.delete_object(info, ns or "", r.name or "", opts)
            return _respond(output(obj, info, r.version))
        if verb == "deletecollection":
            opts = {**(await self._body(request, kind="DeleteOptions") or {}), **_delete_params(params)}
            items, _ = s.list_objects(
                info,
                r.namespace,
                {k: v for k, v in params.items() if k in ("labelSelector", "fieldSelector")},
            )
            for o in items:
                with contextlib.suppress(ApiError):
                    s.delete_object(info, o["metadata"].get("namespace", ""), o["metadata"]["name"], opts)
            return _respond(
                {
                    "kind": info.list_kind,
                    "apiVersion": info.group_version(r.version),
                    "metadata": {"resourceVersion": str(s.rv)},
                    "items": [output(o, info, r.version) for o in items],
                }
            )
        raise ApiError(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the requested resource ({verb})",
        )

    # ---- watch -----------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, r: Route, params: dict[str, str]) -> web.StreamResponse:
        s, info = self.server, r.info
        try:
            label = parse_label_selector(params.get("labelSelector"))
            field = parse_field_selector(params.get("fieldSelector"), info.plural)
        except SelectorError as e:
            raise ApiError(400, "BadRequest", str(e)) from None
        watcher = Watcher(r.namespace if info.namespaced else None, r.name, label, field)
        rv = params.get("resourceVersion") or ""
        as_table = _wants_table(request)
        # Snapshot and registration happen without an await in between: no event can be missed.
        initial: list[tuple[str, dict[str, Any]]] = []
        gone = False
        send_initial = params.get("sendInitialEvents") in ("true", "1")
        if rv in ("", "0") or send_initial:
            objs = [o for o in s.iter_objects(info, watcher.namespace) if watcher.matches(o)]
            objs.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
            initial = [("ADDED", o) for o in objs]
        else:
            try:
                since = int(rv)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version: {rv!r}") from None
            if since < s.evicted[info.key]:
                gone = True
            else:
                for ev in s.history[info.key]:
                    if ev.rv > since:
                        item = watcher.translate(ev)
                        if item is not None:
                            initial.append(item)
        s.watchers[info.key].add(watcher)
        self.streams.add(watcher)
        resp = web.StreamResponse(headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"})
        try:
            await resp.prepare(request)
            self._audit(request, r, "watch", 200)  # streams are recorded when they start, not when they end
            if gone:
                status = ApiError(
                    410, "Expired", f"too old resource version: {rv} ({s.evicted[info.key]})"
                ).status()
                await resp.write(_dumps({"type": "ERROR", "object": status}) + b"\n")
                return resp
            for type_, obj in initial:
                await resp.write(self._event_line(type_, obj, r, as_table))
            if send_initial:
                # The WatchList protocol (kubectl wait, informers): a bookmark ends the initial events.
                bm = {"kind": info.kind, "apiVersion": info.group_version(r.version),
                      "metadata": {"resourceVersion": str(s.rv), "annotations": {"k8s.io/initial-events-end": "true"}}}  # fmt: skip
                await resp.write(_dumps({"type": "BOOKMARK", "object": bm}) + b"\n")
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = time.monotonic() + timeout if timeout else None
            bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
            last_bookmark = time.monotonic()
            while not self.closing:
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if _gone(request):
                        break  # the client hung up while the stream was idle
                    if bookmarks and time.monotonic() - last_bookmark > 30:
                        last_bookmark = time.monotonic()
                        bm = {
                            "kind": info.kind,
                            "apiVersion": info.group_version(r.version),
                            "metadata": {"resourceVersion": str(s.rv)},
                        }
                        await resp.write(_dumps({"type": "BOOKMARK", "object": bm}) + b"\n")
                    continue
                if item is None:
                    break
                await resp.write(self._event_line(item[0], item[1], r, as_table))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            s.watchers[info.key].discard(watcher)
            self.streams.discard(watcher)
        return resp

    def _event_line(self, type_: str, obj: dict[str, Any], r: Route, as_table: bool) -> bytes:
        o = output(obj, r.info, r.version)
        if as_table:
            o = table.build_table(
                r.info.plural, [o], _columns(r.info, r.version), o["metadata"]["resourceVersion"]
            )
        return _dumps({"type": type_, "object": o}) + b"\n"

    def close(self) -> None:
        self.closing = True
        for w in list(self.streams):
            w.queue.put_nowait(None)

    # ---- logs ------------------------------------------------------------------------------------

    async def _logs(self, request: web.Request, r: Route, params: dict[str, str]) -> web.StreamResponse:
        s = self.server
        pod = s.get(r.info, r.namespace or "", r.name or "")
        if pod is None:
            raise _nf(r.info, r.name or "")
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        container = params.get("container")
        if container and container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {r.name}")
        kubelet = s.kubelet
        path = kubelet.log_path(r.namespace or "", r.name or "") if kubelet else None
        text = path.read_bytes() if path is not None and path.exists() else b""
        tail = params.get("tailLines")
        if tail:
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[-int(tail) :]) if int(tail) > 0 else b""
        if params.get("follow") not in ("true", "1"):
            return web.Response(body=text, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(text)
        pos = len(path.read_bytes()) if path is not None and path.exists() else 0
        while not self.closing and not _gone(request):
            await asyncio.sleep(0.2)
            if path is not None and path.exists():
                data = path.read_bytes()
                if len(data) > pos:
                    await resp.write(data[pos:])
                    pos = len(data)
            cur = s.get(r.info, r.namespace or "", r.name or "")
            if cur is None or (cur.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                if path is not None and path.exists() and len(path.read_bytes()) > pos:
                    await resp.write(path.read_bytes()[pos:])
                break
        return resp


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _nf(info: ResourceInfo, name: str) -> ApiError:
    from mnv2_operator.sandbox.server import not_found

    return not_found(info, name)


def _columns(info: ResourceInfo, version: str) -> list[dict[str, Any]] | None:
    if info.printer_columns is None:
        return None
    return info.printer_columns.get(version, [])


def _delete_params(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params.get("propagationPolicy"):
        out["propagationPolicy"] = params["propagationPolicy"]
    if params.get("gracePeriodSeconds"):
        out["gracePeriodSeconds"] = int(params["gracePeriodSeconds"])
    if params.get("dryRun"):
        out["dryRun"] = [params["dryRun"]]
    return out


def make_app(server: ApiServer) -> tuple[web.Application, Handler]:
    handler = Handler(server)
    app = web.Application(client_max_size=256 * 1024 * 1024)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app, handler
