"""A small, pure evaluator of Kubernetes RBAC: which requests do these Roles and bindings allow?

It implements the rules of Kubernetes' RBAC authorizer that matter for checking an operator's rights
(https://kubernetes.io/docs/reference/access-authn-authz/rbac/):

- a rule matches when its apiGroups, resources and verbs each contain the request's value or "*";
  a subresource request ("pods/log") needs "pods/log", "*/log" or "*" in resources;
- a rule with resourceNames matches only requests that name one of them (so never list, watch or
  create, which name nothing);
- a ClusterRoleBinding grants its role everywhere, cluster-scoped resources included; a RoleBinding
  grants its Role or ClusterRole only inside the binding's namespace;
- requests for non-resource URLs (discovery: /api, /apis/..., /version) are allowed for every
  authenticated user by the default `system:discovery` ClusterRole, and here too.

Used by the tests that check every request the operator made (the API server's audit log) against the chart's RBAC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Non-resource URL prefixes every authenticated user may GET (system:discovery, system:public-info-viewer).
DISCOVERY_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")


@dataclass(frozen=True)
class Request:
    """One API request, as an authorizer sees it.

    Attributes:
        verb: get, list, watch, create, update, patch, delete, deletecollection.
        group: API group; "" for the core group.
        resource: plural resource name ("pods"); "" for a non-resource URL.
        subresource: "status", "log", ... or "".
        namespace: the request's namespace; "" for cluster-scoped or all-namespaces requests.
        name: the object's name; "" when the request names none (list, watch, create).
        path: the URL path, used only for non-resource requests.
    """

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    def __str__(self) -> str:
        if not self.resource:
            return f"{self.verb} {self.path}"
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        group = self.group or "core"
        where = f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)"
        named = f" {self.name!r}" if self.name else ""
        return f"{self.verb} {group} {what}{named}{where}"


@dataclass(frozen=True)
class Grant:
    """Rules granted by one binding: everywhere (namespace None) or in one namespace."""

    rules: tuple[Mapping[str, Any], ...]
    namespace: str | None
    source: str


def rule_allows(rule: Mapping[str, Any], request: Request) -> bool:
    """Whether one PolicyRule allows the request (ignoring where the rule was bound)."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and request.verb not in verbs:
        return False
    if not request.resource:
        urls = rule.get("nonResourceURLs") or []
        return any(
            url == "*" or url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
            for url in urls
        )
    groups = rule.get("apiGroups")
    if groups is None or ("*" not in groups and request.group not in groups):
        return False
    resources = rule.get("resources") or []
    if request.subresource:
        wanted = {f"{request.resource}/{request.subresource}", f"*/{request.subresource}", "*"}
    else:
        wanted = {request.resource, "*"}
    if not wanted.intersection(resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or request.name in names


def grants_for_service_account(
    objects: Iterable[Mapping[str, Any]], name: str, namespace: str
) -> list[Grant]:
    """Collect what the given ServiceAccount is granted by the bindings among `objects`.

    Args:
        objects: rendered Kubernetes objects (Roles, ClusterRoles and their bindings; others ignored).
        name: the ServiceAccount's name.
        namespace: the ServiceAccount's namespace.

    Raises:
        ValueError: a binding names a role that is not among `objects`.
    """
    objects = list(objects)
    roles = {
        (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]): obj
        for obj in objects
        if obj.get("kind") in ("Role", "ClusterRole")
    }
    grants = []
    for binding in objects:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            subject.get("kind") == "ServiceAccount"
            and subject.get("name") == name
            and subject.get("namespace", binding["metadata"].get("namespace")) == namespace
            for subject in binding.get("subjects") or []
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
        role_ns = (scope or "") if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role is None:
            raise ValueError(
                f"{kind} {binding['metadata']['name']!r} refers to {ref['kind']} {ref['name']!r}, "
                "which is not among the objects"
            )
        source = f"{kind} {binding['metadata']['name']} -> {ref['kind']} {ref['name']}"
        grants.append(Grant(rules=tuple(role.get("rules") or ()), namespace=scope, source=source))
    return grants


def allowed(grants: Iterable[Grant], request: Request) -> bool:
    """Whether any grant allows the request."""
    if not request.resource and request.verb == "get" and request.path.startswith(DISCOVERY_PATHS):
        return True
    for grant in grants:
        # A RoleBinding's rights hold only inside its namespace; cluster-scoped and all-namespaces
        # requests (namespace "") need a ClusterRoleBinding.
        if grant.namespace is not None and grant.namespace != request.namespace:
            continue
        if any(rule_allows(rule, request) for rule in grant.rules):
            return True
    return False


def denied_requests(grants: Iterable[Grant], requests: Iterable[Request]) -> list[Request]:
    """The distinct requests the grants do not allow, in first-seen order."""
    grants = list(grants)
    seen: dict[Request, None] = {}
    for request in requests:
        if request not in seen and not allowed(grants, request):
            seen[request] = None
    return list(seen)


def unused_rules(grants: Iterable[Grant], requests: Iterable[Request]) -> list[tuple[str, str, str]]:
    """(group, resource, verb) triples the grants allow but no request used.

    Expands each rule's lists (wildcards stay "*"), so the result says which granted verb on which
    resource was never exercised under any binding: the candidates for removal from a least-privilege
    role. A triple granted in several namespaces counts as used when it was used in any of them.
    """
    requests = list(requests)
    granted: list[tuple[str, str, str]] = []
    used: set[tuple[str, str, str]] = set()
    for grant in grants:
        for rule in grant.rules:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        triple = (group, resource, verb)
                        if triple not in granted:
                            granted.append(triple)
                        probe = {**rule, "apiGroups": [group], "resources": [resource], "verbs": [verb]}
                        if any(
                            rule_allows(probe, r)
                            and (grant.namespace is None or grant.namespace == r.namespace)
                            for r in requests
                        ):
                            used.add(triple)
    return [triple for triple in granted if triple not in used]
