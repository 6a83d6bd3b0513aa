#!/usr/bin/env python3
"""Generates kube-sim's table of Kubernetes protobuf field numbers (src/api/protobuf/schema.rs).

kubectl's typed clients (`kubectl create namespace|deployment|configmap|secret|job`) send request bodies as
`application/vnd.kubernetes.protobuf`. kube-sim decodes them with a table of each message's fields: the
field numbers and wire types come from the k8s-pb crate (prost bindings generated from the upstream
`generated.proto` files), the JSON names from k8s-openapi (the same API version's JSON field names), which
is the mapping the real apiserver's codecs apply. Only messages reachable from the kinds kube-sim serves
are written.

    python3 loadtest/kube-sim/tools/protobuf_schema.py ~/.cargo/registry/src/*/k8s-pb-0.8.0 \
        ~/.cargo/registry/src/*/k8s-openapi-0.28.0/src/v1_36 > loadtest/kube-sim/src/api/protobuf/schema.rs
"""

import os
import re
import sys

# The kinds kube-sim serves (resources::ALL), as proto messages.
ROOTS = [
    "api.core.v1.Pod", "api.core.v1.Event", "api.core.v1.Namespace", "api.core.v1.Node",
    "api.core.v1.ConfigMap", "api.core.v1.Secret", "api.core.v1.ServiceAccount",
    "api.core.v1.LimitRange", "api.core.v1.ResourceQuota",
    "api.coordination.v1.Lease", "api.events.v1.Event",
    "api.apps.v1.Deployment", "api.apps.v1.ReplicaSet", "api.apps.v1.StatefulSet",
    "api.apps.v1.DaemonSet", "api.apps.v1.ControllerRevision",
    "api.batch.v1.Job", "api.batch.v1.CronJob",
    "api.rbac.v1.Role", "api.rbac.v1.RoleBinding", "api.rbac.v1.ClusterRole", "api.rbac.v1.ClusterRoleBinding",
    # The body of `pods/eviction` (kubectl drain), and the budgets it honours.
    "api.policy.v1.Eviction", "api.policy.v1.PodDisruptionBudget",
    "api.admissionregistration.v1.MutatingWebhookConfiguration",
    "api.admissionregistration.v1.ValidatingWebhookConfiguration",
]

# Messages whose JSON form is not an object of their fields; the decoder knows each by name.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "apimachinery.pkg.runtime.RawExtension": "RawJson",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
}

# No served kind holds a double or a meta/v1.Duration; a table that needs one fails to compile.
SCALARS = {"string": "String", "bool": "Bool", "int32": "Int", "int64": "Int", "double": "Float", "bytes": "Bytes"}

FIELD = re.compile(r'#\[prost\((?P<attrs>[^\]]*)\)\]\s*pub (?:r#)?(?P<name>\w+):\s*(?P<ty>.*?),\n(?=\s*(?:///|#\[|$))', re.S)
STRUCT = re.compile(r'^pub struct (\w+) \{\n(.*?)^\}', re.S | re.M)


def module_of(root, path):
    rel = os.path.relpath(os.path.dirname(path), os.path.join(root, "src"))
    return rel.split(os.sep)


def resolve(module, ty):
    """The proto full name (without io.k8s.) of the message type named in a Rust type expression."""
    inner = re.findall(r'((?:super::)*(?:[a-z_0-9]+::)*[A-Z]\w*)', ty)
    inner = [t for t in inner if not t.split("::")[-1] in ("Option", "Vec", "Box", "BTreeMap", "String")]
    if not inner:
        raise ValueError(f"no message type in {ty!r}")
    parts = inner[-1].split("::")
    segments = list(module)
    while parts and parts[0] == "super":
        segments.pop()
        parts.pop(0)
    return ".".join(segments + parts)


def parse_pb(root):
    messages = {}
    for dirpath, _, files in os.walk(os.path.join(root, "src")):
        for f in files:
            if f != "mod.rs":
                continue
            path = os.path.join(dirpath, f)
            module = module_of(root, path)
            text = open(path).read()
            for m in STRUCT.finditer(text):
                fields = []
                previous_end = 0
                for fm in FIELD.finditer(m.group(2)):
                    # The Go struct tags kubectl's patches depend on, from the field's doc comment.
                    docs = m.group(2)[previous_end:fm.start()]
                    previous_end = fm.end()
                    ext = ",".join(f"{k}={v}" for k, v in re.findall(
                        r'^\s*/// \+(patchMergeKey|patchStrategy|listType|listMapKey)=(\S+)', docs, re.M))
                    attrs = [a.strip() for a in fm.group("attrs").split(",")]
                    tag = int(re.search(r'tag = "(\d+)"', fm.group("attrs")).group(1))
                    kind = attrs[0].split(" ")[0]
                    repeated = "repeated" in attrs
                    if kind == "btree_map":
                        key, value = re.search(r'btree_map = "(\w+), (\w+)"', fm.group("attrs")).groups()
                        value_ty = ("Msg", resolve(module, fm.group("ty").split(",", 1)[1])) if value == "message" \
                            else ("Scalar", SCALARS[value])
                        fields.append((tag, fm.group("name"), "map", value_ty, ext))
                    elif kind == "message":
                        fields.append((tag, fm.group("name"), "list" if repeated else "one",
                                       ("Msg", resolve(module, fm.group("ty"))), ext))
                    else:
                        fields.append((tag, fm.group("name"), "list" if repeated else "one",
                                       ("Scalar", SCALARS[kind]), ext))
                messages[".".join(module + [m.group(1)])] = fields
    return messages


def parse_openapi(root):
    names = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            text = open(path).read()
            s = re.search(r'^pub struct (\w+)', text, re.M)
            if not s:
                continue
            module = os.path.relpath(dirpath, root).split(os.sep)
            json = re.findall(r'"([A-Za-z0-9$_-]+)" => Field::Key_\w+', text)
            names[".".join(module + [s.group(1)])] = json
    return names


def normal(name):
    return name.replace("_", "").lower()


def main():
    pb, openapi = parse_pb(sys.argv[1]), parse_openapi(sys.argv[2])
    # k8s-pb spells acronyms as words (HttpGetAction), k8s-openapi as Go does (HTTPGetAction).
    openapi = {normal(k): v for k, v in openapi.items()}
    names = {}  # message -> {normalised field name: JSON name}
    wanted, queue = [], [(r, None) for r in ROOTS]
    while queue:
        name, parent = queue.pop()
        if name in SPECIAL:
            continue
        own = openapi.get(normal(name))
        if own is None and parent is not None:
            # A Go struct embedded in its parent (LocalObjectReference in ConfigMapKeySelector, ProbeHandler
            # in Probe, VolumeSource in Volume): its fields are the parent's in JSON.
            own = openapi.get(normal(parent), [])
        names.setdefault(name, {}).update({normal(j): j for j in own or []})
        if name in wanted:
            continue
        wanted.append(name)
        for _, _, _, (kind, ty), _ in pb[name]:
            if kind == "Msg":
                queue.append((ty, name))
    out = [
        "//! Generated by `loadtest/kube-sim/tools/protobuf_schema.py` from k8s-pb 0.8.0 (field numbers) and",
        "//! k8s-openapi 0.28 v1_36 (JSON names). Do not edit by hand.",
        "",
        "use super::{F, Field, Message, Shape::*, Type::*};",
        "",
        "/// The messages reachable from the kinds kube-sim serves, sorted by name.",
        "#[rustfmt::skip]",
        "pub(super) static MESSAGES: &[Message] = &[",
    ]
    for name in sorted(wanted):
        out.append(f'    Message {{ name: "{name}", fields: &[')
        for tag, rust, shape, (kind, ty), ext in sorted(pb[name]):
            json = names[name].get(normal(rust))
            if json is None and kind == "Msg" and ty not in SPECIAL:
                shape, json = "inline", rust  # embedded: its fields go into this object
            elif json is None:
                sys.exit(f"{name}.{rust} has no JSON name in k8s-openapi")
            shape_rs = {"one": "One", "list": "List", "map": "Map", "inline": "Inline"}[shape]
            ty_rs = (SPECIAL.get(ty) or f'Msg("{ty}")') if kind == "Msg" else ty
            rest = f'ext: "{ext}" ' if ext else "..F "
            out.append(f'        Field {{ tag: {tag}, json: "{json}", shape: {shape_rs}, ty: {ty_rs}, {rest}}},')
        out.append("    ] },")
    out.append("];")
    print("\n".join(out))


if __name__ == "__main__":
    main()
