"""Kubernetes' own value formats, checked before anything reaches the API server or a pod.

A value the API server would refuse must be refused here, with the field and the fix, instead of making
every create fail; and a value that would be expanded or interpreted inside the pod (``$(VAR)`` in a
command argument, ``..`` in a path, a loader variable in the environment) must never get that far.

The formats are Kubernetes' (k8s.io/apimachinery/pkg/util/validation and pkg/api/resource): DNS-1123
labels and subdomains, qualified names (label keys, extended resource names), label values, C
identifiers for environment variable names, and resource quantities. Each checker returns ``None`` when
the value is fine, else the problem and the fix as one ``<problem>; <fix>`` text. The patterns are
applied with ``fullmatch`` (with ``match``, ``$`` would accept a trailing newline).
"""

from __future__ import annotations

import posixpath
import re
from decimal import Decimal, InvalidOperation

# --------------------------------------------------------------------------------------------------
# Names (k8s.io/apimachinery/pkg/util/validation)
# --------------------------------------------------------------------------------------------------

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(rf"^{_DNS1123_LABEL}$")
DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUALIFIED_NAME_MAX = 63
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_VALUE_MAX = 63
#: Environment variable names: C identifiers. (Newer API servers accept any printable ASCII but '='
#: when a feature gate is on; the shells and tools in the trainer image expect identifiers.)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_NAME_MAX = 128


def _text(value: object) -> str:
    """A value as shown in a message: quoted, shortened, control characters escaped."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"  # (repr of a huge int raises ValueError)
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _control(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def dns1123_subdomain(value: str, what: str = "name") -> str | None:
    """A DNS-1123 subdomain (names of PVCs, Secrets, PriorityClasses, schedulers, queues)."""
    if len(value) > DNS1123_SUBDOMAIN_MAX or not DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            f"{_text(value)} is not a valid {what}; use at most {DNS1123_SUBDOMAIN_MAX} lower-case letters, "
            "digits, '-' and '.', starting and ending with a letter or digit (no '..'), e.g. imagenet-2012"
        )
    return None


def dns1123_label(value: str, what: str = "name") -> str | None:
    """A DNS-1123 label (one dot-free part of a DNS name)."""
    if len(value) > DNS1123_LABEL_MAX or not DNS1123_LABEL.fullmatch(value):
        return (
            f"{_text(value)} is not a valid {what}; use at most {DNS1123_LABEL_MAX} lower-case letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return None


def qualified_name(value: str, what: str = "key", *, need_prefix: bool = False) -> str | None:
    """A qualified name, ``[prefix/]name``: label and annotation keys, extended resource names.

    The prefix is a DNS-1123 subdomain, the name at most 63 of ``[-A-Za-z0-9_.]`` starting and ending
    alphanumeric. Neither contains a quote, bracket or space, so a qualified name is safe inside a
    fieldPath such as ``metadata.annotations['<name>']``.
    """
    example = "huawei.com/Ascend910" if need_prefix else "example.com/pool or pool"
    fix = (
        f"use [prefix/]name with a DNS subdomain as prefix and at most {QUALIFIED_NAME_MAX} letters, "
        f"digits, '-', '_' and '.' as name, e.g. {example}"
    )
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or dns1123_subdomain(prefix) is not None or "/" in prefix):
        return f"{_text(value)} is not a valid {what} (bad prefix {_text(prefix)}); {fix}"
    if need_prefix and not slash:
        return f"{_text(value)} is not a valid {what} (it needs a domain prefix); {fix}"
    if len(name) > QUALIFIED_NAME_MAX or not _QUALIFIED_NAME_PART.fullmatch(name):
        return f"{_text(value)} is not a valid {what}; {fix}"
    return None


def extended_resource_name(value: str) -> str | None:
    """A device plugin's extended resource name, e.g. ``huawei.com/Ascend910`` (never kubernetes.io's)."""
    problem = qualified_name(value, "extended resource name", need_prefix=True)
    if problem:
        return problem
    domain = value.split("/", 1)[0]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io") or domain == "requests":
        return (
            f"{_text(value)} is in a domain Kubernetes reserves; use the device plugin's own resource name, "
            "e.g. huawei.com/Ascend910"
        )
    return None


def label_value(value: str) -> str | None:
    """A label value: empty, or at most 63 of ``[-A-Za-z0-9_.]`` starting and ending alphanumeric."""
    if len(value) > LABEL_VALUE_MAX or not _LABEL_VALUE.fullmatch(value):
        return (
            f"{_text(value)} is not a valid label value; use at most {LABEL_VALUE_MAX} letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit, e.g. huawei-Ascend910"
        )
    return None


def env_name(value: str) -> str | None:
    """An environment variable name: a C identifier."""
    if len(value) > ENV_NAME_MAX or not ENV_NAME.fullmatch(value):
        return (
            f"{_text(value)} is not a valid environment variable name; use a C identifier (letters, digits "
            f"and '_', not starting with a digit, at most {ENV_NAME_MAX} characters), e.g. GLOG_v"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Container images (the grammar of github.com/distribution/reference)
# --------------------------------------------------------------------------------------------------

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
IMAGE_REFERENCE = re.compile(rf"^(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?$", re.ASCII)
IMAGE_MAX = 512


def image_reference(value: str) -> str | None:
    """A container image reference, ``[registry[:port]/]repository[:tag][@digest]``."""
    found = IMAGE_REFERENCE.fullmatch(value) if len(value) <= IMAGE_MAX else None
    if found is None or len(found["name"]) > 255:
        return (
            f"{_text(value)} is not an image reference; write [registry/]repository[:tag][@sha256:digest] "
            "in lower case, e.g. registry.example.com/mnv2-trainer:0.1.0"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Quantities (k8s.io/apimachinery/pkg/api/resource)
# --------------------------------------------------------------------------------------------------

#: The canonical quantity grammar: a signed decimal number, then a binary suffix (Ki..Ei), a decimal
#: suffix (n, u, m, k, M, G, T, P, E) or a decimal exponent (e3, E-2).
QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?$",
    re.ASCII,
)


def parse_quantity(value: object) -> Decimal:
    """A Kubernetes quantity's value, parsed strictly (the API server's grammar) and exactly.

    Raises:
        ValueError: not a quantity (the message says what is accepted).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, str | int)
        or (isinstance(value, int) and value.bit_length() > 64)
    ):
        raise ValueError(f"{_text(value)} is not a Kubernetes quantity; write e.g. 4, 500m or 16Gi")
    text = str(value)
    if not QUANTITY.fullmatch(text):
        raise ValueError(f"{_text(value)} is not a Kubernetes quantity; write e.g. 4, 500m or 16Gi")
    from kubernetes.utils.quantity import parse_quantity as parse  # the client's exact Decimal parser

    try:
        return Decimal(parse(text))
    except (ValueError, InvalidOperation, ArithmeticError):
        raise ValueError(f"{_text(value)} is not a Kubernetes quantity; write e.g. 4, 500m or 16Gi") from None


def bounded_quantity(value: object, maximum: Decimal, unit: str, example: str) -> str:
    """A quantity that is positive and at most ``maximum``, as the text stored in the object.

    Raises:
        ValueError: not a quantity, zero or negative, or larger than ``maximum``.
    """
    amount = parse_quantity(value)
    if amount <= 0:
        raise ValueError(f"{_text(value)} must be more than zero; write e.g. {example}")
    if amount > maximum:
        raise ValueError(f"{_text(value)} is more than the largest accepted {unit}; write e.g. {example}")
    return str(value)


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------

PATH_MAX = 1024


def _path_common(value: str) -> str | None:
    if not value:
        return "is empty"
    if len(value) > PATH_MAX:
        return f"is longer than {PATH_MAX} characters"
    if _control(value):
        return "contains a control character (newline, tab, ...)"
    if "$(" in value:
        return "contains '$(' (the kubelet would expand it as a variable, so the path is not what it reads)"
    if ".." in value.split("/"):
        return "contains '..'"
    return None


def relative_path(value: str, example: str = "imagenet/2012") -> str | None:
    """A path inside a volume: relative, no ``..``, no control characters, no ``$(``."""
    problem = _path_common(value)
    if problem is None and value.startswith("/"):
        problem = "is absolute"
    if problem:
        return f"{_text(value)} {problem}; write a relative path inside the volume, e.g. {example}"
    return None


def absolute_path(value: str, example: str) -> str | None:
    """An absolute, normalised path: no ``..``, ``.``, ``//`` or trailing ``/``, never ``/`` itself."""
    problem = _path_common(value)
    if problem is None and not value.startswith("/"):
        problem = "is not absolute"
    if problem is None and value == "/":
        problem = "is the root folder"
    if problem is None and posixpath.normpath(value) != value:
        problem = f"is not normalised (it means {posixpath.normpath(value)!r})"
    if problem:
        return f"{_text(value)} {problem}; write an absolute normalised path, e.g. {example}"
    return None


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether normalised absolute ``path`` is one of ``prefixes`` or inside one (whole components)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


# --------------------------------------------------------------------------------------------------
# Environment variables the job may not set
# --------------------------------------------------------------------------------------------------

#: Names a job may not set in the trainer's environment, with why. Each of these makes a process in the
#: pod load or run code from somewhere other than the trainer image (a writable volume, a compiler of the
#: job author's choosing), or would send the trainer's ServiceAccount token elsewhere; the admin's
#: allowed-image policy would mean nothing if the environment could replace the image's code.
DENIED_ENV: dict[str, str] = {
    "PATH": "msrun and the trainer find python and the C++ compiler through it",
    "HOME": "Python's user site-packages (~/.local, whose .pth files run code) and the kernel cache live there",
    "TMPDIR": "the trainer loads its compiled CPU kernel from a cache under it",
    "MNV2_KERNEL_CACHE": "the trainer loads a shared library from this folder",
    "CC": "a C compiler the trainer would run",
    "CXX": "the trainer compiles its CPU depthwise kernel with this compiler",
    "CPP": "a preprocessor compilers run",
    "CFLAGS": "compiler flags (-fplugin loads code into the compiler)",
    "CXXFLAGS": "compiler flags (-fplugin loads code into the compiler)",
    "CPPFLAGS": "compiler flags",
    "LDFLAGS": "linker flags",
    "GCC_EXEC_PREFIX": "where g++ finds the programs it runs",
    "COMPILER_PATH": "where g++ finds the programs it runs",
    "ENV": "a file sh sources at start",
    "BASH_ENV": "a file bash sources at start",
    "SHELL": "the shell some tools start",
    "GLIBC_TUNABLES": "glibc's loader reads it before anything else (and has had exploitable bugs)",
    "GCONV_PATH": "glibc loads character-set modules (shared libraries) from it",
    "OPENSSL_CONF": "OpenSSL loads engines and providers (shared libraries) named in it",
    "OPENSSL_ENGINES": "OpenSSL loads engines (shared libraries) from it",
    "OPENSSL_MODULES": "OpenSSL loads providers (shared libraries) from it",
    "KUBECONFIG": "the status reporter would read a kubeconfig, whose exec plugins run commands",
    "SSL_CERT_FILE": "the certificates the status reporter trusts when it sends the token",
    "SSL_CERT_DIR": "the certificates the status reporter trusts when it sends the token",
    "REQUESTS_CA_BUNDLE": "the certificates HTTP clients trust",
    "CURL_CA_BUNDLE": "the certificates HTTP clients trust",
    "HTTP_PROXY": "would route the trainer's API requests (with its token) through another host",
    "HTTPS_PROXY": "would route the trainer's API requests (with its token) through another host",
    "ALL_PROXY": "would route the trainer's API requests (with its token) through another host",
    "NO_PROXY": "belongs with the proxy variables",
    # msrun sets these for its workers from --worker_num, --node_rank, --master_addr, ...
    "MS_ROLE": "msrun sets it for each process",
    "MS_SCHED_HOST": "msrun sets it from the job's master address",
    "MS_SCHED_PORT": "msrun sets it from the job's master port",
    "MS_WORKER_NUM": "msrun sets it from spec.nodes x spec.devicesPerNode",
    "MS_NODE_ID": "msrun sets it for each process",
    "MS_TOPO_TIMEOUT": "msrun sets it from spec.clusterTimeoutSeconds",
    "MS_SIMULATION_LEVEL": "makes msrun's workers simulate instead of train",
    "RANK_ID": "msrun sets it for each process",
    "RANK_SIZE": "msrun sets it for each process",
    "RANK_TABLE_FILE": "msrun's rank table; the job uses dynamic cluster setup instead",
    "DEVICE_ID": "msrun sets it for each process",
}
#: Name prefixes a job may not use (after the exact names above), with why.
DENIED_ENV_PREFIXES: dict[str, str] = {
    "LD_": "the dynamic loader's variables (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...) load shared libraries",
    "PYTHON": (
        "the interpreter's variables (PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE, PYTHONWARNINGS, "
        "...) choose which code Python imports"
    ),
    "KUBERNETES_": "the API server address the status reporter sends its token to",
    "MNV2_": "reserved for the operator and the trainer",
    "MSRUN_": "msrun sets these itself",
}
#: Name endings a job may not use, with why: search paths and installation roots of libraries and
#: tools (LIBRARY_PATH, CPATH, ASCEND_OPP_PATH, ASCEND_CUSTOM_OPP_PATH, TBE_IMPL_PATH, NLSPATH, ...,
#: ASCEND_HOME, XDG_CACHE_HOME, ...) tell programs where to load code and kernels from.
DENIED_ENV_SUFFIXES: dict[str, str] = {
    "PATH": "a search path for programs, libraries or operator kernels",
    "_HOME": "an installation or cache root programs load files from",
    "_PRELOAD": "a library to load before the program",
}
#: Exceptions to the prefixes above: harmless knobs a job may set.
ALLOWED_ENV: frozenset[str] = frozenset(
    {
        "PYTHONFAULTHANDLER",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE",
        "MNV2_CPU_DEPTHWISE",
    }
)


def denied_env(name: str) -> str | None:
    """Why ``name`` may not be set by a job, or ``None`` when it may (case-insensitive)."""
    upper = name.upper()
    if upper in ALLOWED_ENV:
        return None
    if upper in DENIED_ENV:
        return DENIED_ENV[upper]
    for prefix, why in DENIED_ENV_PREFIXES.items():
        if upper.startswith(prefix):
            return why
    for suffix, why in DENIED_ENV_SUFFIXES.items():
        if upper.endswith(suffix):
            return why
    return None
