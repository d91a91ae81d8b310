"""Routing and handlers: one HTTP request in, one response (or a watch stream) out.

Transport-free: the server (server.py) authenticates, builds a `Request` and
writes the `Response`, so handlers can be exercised without sockets. Paths and
semantics are the API server's:

    /version  /api  /apis  /apis/GROUP  /api/v1  /apis/GROUP/VERSION       discovery
    /api/v1/RESOURCE[/NAME[/SUBRESOURCE]]                                   cluster scope
    /api/v1/namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]                     namespaced
    ...?watch=true (or the legacy /api/v1/watch/... prefix)                 watch
    /api/v1/nodes/NODE/proxy/PATH                                           the kubelet's PATH
    .../pods/NAME/eviction, .../deployments/NAME/scale    handlers given to serve_subresource

Every request is authorized (`Authorizer`) with the verb and resource the
real server would use, so a later RBAC model plugs in without touching
handlers. Errors are `Status` bodies (errors.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.nodes.protocol import (
    Attributes,
    Authorizer,
    BadRequest,
    Request,
    Response,
    allow_all,
    decide,
    table_version,
)
from e2e.sim import authz, discovery, openapi
from e2e.sim.errors import (
    ApiError,
    bad_request,
    forbidden,
    method_not_allowed,
    status_body,
)
from e2e.sim.resources import Registry, ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Obj
from e2e.sim.tables import render_table
from e2e.sim.validation import field_validation
from e2e.sim.watch import watch_response

__all__ = ["Api", "NodeProxy", "SubresourceHandler"]

#: (the Node, the request, the path on the kubelet) -> the kubelet's response.
NodeProxy = Callable[[Obj, Request, str], Response]
#: Serves one subresource (pods/eviction, deployments/scale) after routing and
#: authorization: (request, verb, resource type, namespace, name) -> response.
SubresourceHandler = Callable[[Request, str, ResourceType, str, str], Response]

_NOT_FOUND_MESSAGE = "the server could not find the requested resource"
_PUBLIC_PATHS = ("/healthz", "/livez", "/readyz")
_OPTIONS_KINDS = {"create": "CreateOptions", "update": "UpdateOptions", "patch": "PatchOptions"}


@dataclass(frozen=True)
class _Target:
    """A resolved resource path."""

    rt: ResourceType
    namespace: str
    name: str | None
    subresource: str | None
    watch_prefix: bool


def _strip_type(obj: Obj) -> Obj:
    # The API server omits kind/apiVersion on the items of a typed list.
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _encode_continue(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        ns, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(ns), str(name)
    except (ValueError, TypeError, binascii.Error):
        raise bad_request(f"continue key is not valid: {token!r}") from None


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return str(meta.get("namespace") or ""), str(meta["name"])


class Api:
    """The request router; one per simulated cluster.

    server_address: `127.0.0.1:PORT`, for /api's serverAddressByClientCIDRs
        (a callable: the port is known only once the server listens).
    log: where unexpected errors (bugs) are reported, with their traceback.
    node_proxy: forwards `nodes/NAME/proxy/PATH` requests to the node's kubelet
        (None: they answer 503).
    """

    def __init__(
        self,
        rest: Rest,
        registry: Registry,
        *,
        authorizer: Authorizer = allow_all,
        server_address: Callable[[], str] = lambda: "127.0.0.1:443",
        log: Callable[[str], None] = lambda line: None,
        node_proxy: NodeProxy | None = None,
    ) -> None:
        self.rest = rest
        self.registry = registry
        self.authorizer = authorizer
        self.server_address = server_address
        self.log = log
        self.node_proxy = node_proxy
        self._subresources: dict[tuple[str, str], SubresourceHandler] = {}

    def serve_subresource(self, rt: ResourceType, name: str, handler: SubresourceHandler) -> None:
        """Answer `rt`'s subresource `name` (listed in rt.subresources) with `handler`."""
        self._subresources[(rt.key, name)] = handler

    # -- entry point -----------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Answer one request; API errors become Status responses."""
        try:
            return self._route(req)
        except ApiError as e:
            return Response(e.code, e.status())
        except BadRequest as e:
            return Response(400, status_body(400, "BadRequest", str(e)))
        except Exception as e:  # a simulator bug: answer as the API server would
            self.log(f"{req.method} {req.path}: {traceback.format_exc()}")
            return Response(500, status_body(500, "InternalError",
                                             f"Internal error occurred: {e!r}"))

    def _authorize(self, attrs: Attributes) -> None:
        decision = decide(self.authorizer, attrs)
        if decision.allowed:
            return
        # The authorizer's reason, if any, follows the API server's sentence after ": ".
        why = f": {decision.reason}" if decision.reason else ""
        if not attrs.resource:
            raise ApiError(403, "Forbidden", f'forbidden: User "{attrs.user.name}" cannot '
                           f'{attrs.verb.lower()} path "{attrs.path}"{why}')
        resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
        scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else \
            "at the cluster scope"
        # The subject is the resource (`nodes "n" is forbidden`), the reason names the
        # subresource too (`cannot create resource "nodes/proxy"`), as the API server says.
        raise forbidden(attrs.resource, attrs.name, f'User "{attrs.user.name}" cannot '
                        f'{attrs.verb} resource "{resource}" in API group "{attrs.group}" '
                        f'{scope}{why}', attrs.group)

    def _route(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            return self._non_resource(req, parts)
        if parts[0] == "api":
            if len(parts) == 1:
                return self._discovery(req, discovery.api_versions(self.server_address()))
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return self._discovery(req, discovery.api_group_list(self.registry))
            if len(parts) == 2:
                return self._discovery(req, discovery.api_group(self.registry, parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            return self._discovery(
                req, discovery.api_resource_list(self.registry, group, version))
        return self._resource(req, self._resolve(group, version, rest))

    def _non_resource(self, req: Request, parts: list[str]) -> Response:
        if req.path in _PUBLIC_PATHS:
            return Response(200, b"ok", "text/plain; charset=utf-8")
        self._authorize(Attributes(req.user, req.method.lower(), path=req.path))
        if req.method == "GET" and parts == ["version"]:
            return Response(200, discovery.version_info())
        if req.method == "GET" and parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})

    def _openapi(self, rest: list[str]) -> Response:
        if not rest:
            return Response(200, openapi.root_document(self.registry))
        document = None
        if rest[0] == "api" and len(rest) == 2:
            document = openapi.group_version_document(self.registry, "", rest[1])
        elif rest[0] == "apis" and len(rest) == 3:
            document = openapi.group_version_document(self.registry, rest[1], rest[2])
        if document is None:
            raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        return Response(200, document)

    def _discovery(self, req: Request, document: dict[str, Any] | None) -> Response:
        self._authorize(Attributes(req.user, req.method.lower(), path=req.path))
        if document is None:
            raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        if req.method != "GET":
            raise method_not_allowed()
        return Response(200, document)

    def _resolve(self, group: str, version: str, rest: list[str]) -> _Target:
        watch = rest[0] == "watch"
        if watch:
            rest = rest[1:]
        namespaces = self.registry.lookup("", "v1", "namespaces")
        ns_subresources = namespaces.subresources if namespaces else {}
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ns_subresources:
            namespace, plural, tail = rest[1], rest[2], rest[3:]
            rt = self.registry.lookup(group, version, plural)
            if rt is None or not rt.namespaced:
                raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        elif rest:
            namespace, plural, tail = "", rest[0], rest[1:]
            rt = self.registry.lookup(group, version, plural)
            if rt is None or (rt.namespaced and tail):
                raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        else:
            raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        name = tail[0] if tail else None
        sub = "/".join(tail[1:]) or None
        return _Target(rt, namespace, name, sub, watch)

    # -- resources -------------------------------------------------------------------

    def _verb(self, req: Request, target: _Target) -> str:
        proxied = (target.subresource or "").split("/")[0] == "proxy"
        watching = not proxied and (target.watch_prefix or req.param("watch") in ("true", "1"))
        if req.method == "GET":
            if watching:
                return "watch"
            return "get" if target.name is not None else "list"
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        if req.method not in verbs:
            raise method_not_allowed()
        if req.method == "DELETE" and target.name is None:
            return "deletecollection"
        return verbs[req.method]

    def _resource(self, req: Request, target: _Target) -> Response:
        verb = self._verb(req, target)
        rt = target.rt
        sub = target.subresource
        # nodes/NAME/proxy/PATH is the subresource `proxy` (PATH goes to the kubelet).
        sub_name = sub.split("/")[0] if sub else ""
        self._authorize(Attributes(
            req.user, verb, rt.group, rt.plural, sub_name, target.namespace, target.name or "",
        ))
        # Authorized first, as the API server does: a denied user learns nothing more.
        if sub and sub_name not in rt.subresources:
            raise ApiError(404, "NotFound", _NOT_FOUND_MESSAGE, {})
        allowed = rt.subresources.get(sub_name, ()) if sub else rt.verbs
        all_namespaces = rt.namespaced and not target.namespace
        if verb not in allowed or (all_namespaces and verb not in ("list", "watch")):
            raise method_not_allowed()
        if sub_name == "proxy":
            return self._proxy(req, target)
        served = self._subresources.get((rt.key, sub_name)) if sub else None
        if served is not None and target.name is not None:
            return served(req, verb, rt, target.namespace, target.name)
        handler = getattr(self, f"_{verb}")
        if verb not in _OPTIONS_KINDS:
            response: Response = handler(req, target)
            return response
        # Writes decode their body under the request's fieldValidation (validation.py).
        with field_validation(req.param("fieldValidation"), _OPTIONS_KINDS[verb]) as scope:
            response = handler(req, target)
        warning = scope.warning_header()
        if warning:
            response.headers["Warning"] = warning
        return response

    def _proxy(self, req: Request, target: _Target) -> Response:
        # What `kubectl get --raw /api/v1/nodes/N/proxy/...` reaches: the node's kubelet,
        # whose answer (any status, any body) is passed back unchanged.
        assert target.name is not None and target.subresource is not None
        node = self.rest.get(target.rt, target.namespace, target.name)
        if self.node_proxy is None:
            raise ApiError(503, "ServiceUnavailable", "error trying to reach service: "
                           "no kubelet is reachable in this cluster")
        path = "/" + "/".join(target.subresource.split("/")[1:])
        return self.node_proxy(node, req, path)

    def _get(self, req: Request, target: _Target) -> Response:
        assert target.name is not None
        obj = self.rest.get(target.rt, target.namespace, target.name)
        table = table_version(req.headers.get("Accept", ""))
        if table and target.subresource is None:
            return self._table_response(req, target.rt, [obj], obj["metadata"]["resourceVersion"],
                                        table)
        return Response(200, obj)

    def _table_response(
        self, req: Request, rt: ResourceType, objs: list[Obj], rv: str, version: str
    ) -> Response:
        body = render_table(rt.table, objs, resource_version=rv,
                            include_object=req.param("includeObject") or "Metadata",
                            api_version=version)
        v = version.split("/")[1]
        return Response(200, body, f"application/json;as=Table;v={v};g=meta.k8s.io")

    def _list(self, req: Request, target: _Target) -> Response:
        rt = target.rt
        match = self.rest.matcher(rt, req.param("labelSelector"), req.param("fieldSelector"))
        namespace = target.namespace if rt.namespaced and target.namespace else None
        # Only read and serialized: no copies needed.
        items, rv = self.rest.snapshot(rt, namespace, match)
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        token = req.param("continue")
        if token:
            start = _decode_continue(token)
            items = [o for o in items if _key(o) > start]
        limit = req.int_param("limit")
        if limit and limit > 0 and len(items) > limit:
            metadata["continue"] = _encode_continue(_key(items[limit - 1]))
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        table = table_version(req.headers.get("Accept", ""))
        if table:
            response = self._table_response(req, rt, items, str(rv), table)
            response.body["metadata"] = metadata
            return response
        return Response(200, {
            "kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": metadata,
            "items": [_strip_type(o) for o in items],
        })

    def _create(self, req: Request, target: _Target) -> Response:
        rt = target.rt
        if target.subresource == "binding":
            return self._bind(req, target)
        if rt.key == authz.SELF_SUBJECT_ACCESS_REVIEWS.key:  # answered, never stored
            return Response(201, authz.self_subject_access_review(
                self.authorizer, req.user, self.rest.decode(rt, req.json())))
        if target.name is not None:
            raise method_not_allowed()
        return Response(201, self.rest.create(rt, target.namespace, req.json()))

    def _bind(self, req: Request, target: _Target) -> Response:
        # POST pods/NAME/binding: what a scheduler does to place a pod.
        assert target.name is not None
        body = req.json() or {}
        node = (body.get("target") or {}).get("name") if isinstance(body, dict) else None
        if not node:
            raise bad_request("a Binding needs target.name")

        def bind(pod: Obj) -> Obj:
            if pod["spec"].get("nodeName"):
                raise ApiError(409, "Conflict", f'pod {target.name} is already assigned to '
                               f'node "{pod["spec"]["nodeName"]}"')
            pod["spec"]["nodeName"] = node
            return pod

        self.rest.mutate(target.rt, target.namespace, target.name, bind)
        return Response(201, status_body(201, "", ""))

    def _update(self, req: Request, target: _Target) -> Response:
        assert target.name is not None
        return Response(200, self.rest.update(target.rt, target.namespace, target.name,
                                              req.json(), target.subresource))

    def _patch(self, req: Request, target: _Target) -> Response:
        assert target.name is not None
        content_type = req.headers.get("Content-Type") or "application/json"
        return Response(200, self.rest.patch(target.rt, target.namespace, target.name,
                                             content_type, req.json(), target.subresource))

    def _delete_options(self, req: Request) -> tuple[int | None, dict[str, Any]]:
        body = req.json() or {}
        if not isinstance(body, dict):
            raise bad_request("the body of a DELETE must be DeleteOptions")
        grace = req.int_param("gracePeriodSeconds")
        if grace is None and body.get("gracePeriodSeconds") is not None:
            grace = int(body["gracePeriodSeconds"])
        return grace, dict(body.get("preconditions") or {})

    def _propagation(self, req: Request) -> str | None:
        # propagationPolicy (query or body), else the legacy orphanDependents flag.
        body = req.json() or {}
        policy = req.param("propagationPolicy") or body.get("propagationPolicy")
        orphan = req.param("orphanDependents") or body.get("orphanDependents")
        if policy is None and orphan is not None:
            policy = "Orphan" if str(orphan).lower() == "true" else "Background"
        return str(policy) if policy is not None else None

    def _delete(self, req: Request, target: _Target) -> Response:
        assert target.name is not None
        rt = target.rt
        grace, preconditions = self._delete_options(req)
        obj, gone = self.rest.delete(rt, target.namespace, target.name, grace=grace,
                                     preconditions=preconditions,
                                     propagation=self._propagation(req))
        if not gone or rt.return_deleted:
            return Response(200, obj)
        return Response(200, status_body(200, "", "", {
            "name": target.name, "kind": rt.plural, "uid": obj["metadata"].get("uid"),
            **({"group": rt.group} if rt.group else {}),
        }))

    def _deletecollection(self, req: Request, target: _Target) -> Response:
        rt = target.rt
        grace, _ = self._delete_options(req)
        match = self.rest.matcher(rt, req.param("labelSelector"), req.param("fieldSelector"))
        items, _ = self.rest.list(rt, target.namespace if rt.namespaced else None, match)
        deleted = []
        for obj in items:
            try:
                state, _gone = self.rest.delete(rt, obj["metadata"].get("namespace", ""),
                                                obj["metadata"]["name"], grace=grace,
                                                propagation=self._propagation(req))
            except ApiError as e:
                if e.code != 404:
                    raise
                continue
            deleted.append(_strip_type(state))
        return Response(200, {"kind": rt.list_kind, "apiVersion": rt.api_version,
                              "metadata": {}, "items": deleted})

    def _watch(self, req: Request, target: _Target) -> Response:
        rt = target.rt
        namespace = target.namespace if rt.namespaced and target.namespace else None
        return watch_response(self.rest, req, rt, namespace, target.name)
