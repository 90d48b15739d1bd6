#!/usr/bin/env python3
"""The Python half of scripts/deploy-check, run with the deploy venv's interpreter.

One subcommand per check. Each prints what it found and ends with one summary line;
the exit code says whether the check passed (0) or failed (1).

  dockerfile-policy   what hadolint does not know: scratch, a numeric non-root user,
                      the entry point, the copied files exist, the volume is storage.dir
  sysctl FILE         every key of a sysctl.d file exists in this kernel's /proc/sys
  k8s-schemas [FILE]  every manifest (or the rendered FILE) against the Kubernetes JSON
                      schemas (strict), the ServiceMonitor against our own schema
  k8s-kustomization   kustomization.yaml lists every manifest of the folder
  k8s-policy          invariants across files (grace period, probes, ports, user, ...)
  config BINARY       the ConfigMap's and the image's TOML through `starling config`,
                      with the pod's environment (the Secret example's keys)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
DOCKERIGNORE = ROOT / "deploy/docker/Dockerfile.dockerignore"
IMAGE_CONFIG = ROOT / "deploy/docker/config.toml"
KDIR = ROOT / "deploy/kubernetes"
SERVICEMONITOR_SCHEMA = ROOT / "deploy/check/servicemonitor.schema.json"
# The oldest Kubernetes these manifests support (the preStop sleep action is beta and on
# by default from 1.30) and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Documented defaults (docs/OPERATIONS.md) used when the TOML leaves a setting out.
DEFAULT_SHUTDOWN_TIMEOUT = 10
DEFAULT_STORAGE_DIR = "starling-data"


class Failed(Exception):
    pass


def rel(path):
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "rendered"


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization():
    return load_yaml_docs(KDIR / "kustomization.yaml")[0]


def manifests():
    """(path, doc) for every resource listed in kustomization.yaml, then the examples."""
    out = []
    for name in kustomization().get("resources", []):
        for doc in load_yaml_docs(KDIR / name):
            out.append((KDIR / name, doc))
    for path in sorted(KDIR.glob("*.example.yaml")):
        for doc in load_yaml_docs(path):
            out.append((path, doc))
    return out


def find(docs, kind, name=None):
    hits = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise Failed(f"expected one {kind}{' ' + name if name else ''}, found {len(hits)}")
    return hits[0]


# --- Dockerfile -----------------------------------------------------------------------

def dockerfile_instructions():
    """(instruction, arguments) with continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def cmd_dockerfile_policy():
    problems = []
    instr = dockerfile_instructions()
    froms = [i for i, (w, _) in enumerate(instr) if w == "FROM"]
    if not froms:
        raise Failed("no FROM")
    final = instr[froms[-1]:]
    base = final[0][1].split()[0]
    if base != "scratch" and not base.startswith("gcr.io/distroless/static"):
        problems.append(f"final stage is FROM {base}, not scratch or distroless static")
    users = [a for w, a in final if w == "USER"]
    if not users:
        problems.append("final stage has no USER (it would run as root)")
        uid = None
    else:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
        if not m:
            problems.append(f"USER {users[-1]} is not numeric (scratch has no /etc/passwd; runAsNonRoot needs a number)")
            uid = None
        else:
            uid = int(m.group(1))
            if uid == 0:
                problems.append("USER is root")
    def exec_form(word):
        vals = [a for w, a in final if w == word]
        if not vals:
            return None
        try:
            return json.loads(vals[-1])
        except json.JSONDecodeError:
            problems.append(f"{word} is not in exec (JSON) form: {vals[-1]}")
            return None
    entry = exec_form("ENTRYPOINT")
    if entry != ["/starling"]:
        problems.append(f'ENTRYPOINT is {entry}, expected ["/starling"]')
    cmd = exec_form("CMD") or []
    if "--config" not in cmd:
        problems.append(f"CMD {cmd} passes no --config")
    expose = [a for w, a in final if w == "EXPOSE"]
    # Sources copied from the build context must exist and pass the ignore file.
    allowed = [l[1:].rstrip("/") for l in DOCKERIGNORE.read_text().splitlines() if l.startswith("!")]
    dests = {}
    for w, a in instr:
        if w != "COPY":
            continue
        words = a.split()
        from_stage = any(x.startswith("--from=") for x in words)
        paths = [x for x in words if not x.startswith("--")]
        srcs, dest = paths[:-1], paths[-1]
        for s in srcs:
            if from_stage:
                continue
            if not (ROOT / s).exists():
                problems.append(f"COPY source {s} does not exist in the repository")
            elif not any(s == p or s.startswith(p + "/") for p in allowed):
                problems.append(f"COPY source {s} is excluded by {rel(DOCKERIGNORE)}")
            dests[dest] = s
    config_path = cmd[cmd.index("--config") + 1] if "--config" in cmd and cmd.index("--config") + 1 < len(cmd) else None
    if config_path and config_path not in dests:
        problems.append(f"CMD reads {config_path}, which no COPY provides")
    config = tomllib.loads(IMAGE_CONFIG.read_text())
    listen = config.get("server", {}).get("listen", "127.0.0.1:8000")
    port = listen.rsplit(":", 1)[1]
    if listen.startswith("127.") or listen.startswith("[::1]"):
        problems.append(f"{rel(IMAGE_CONFIG)} listens on loopback ({listen}): unreachable from outside the container")
    if [port] != expose:
        problems.append(f"EXPOSE {expose} differs from server.listen port {port}")
    storage = config.get("storage", {}).get("dir", DEFAULT_STORAGE_DIR)
    volumes = [v for w, a in final if w == "VOLUME" for v in json.loads(a)]
    if storage not in volumes:
        problems.append(f"storage.dir {storage} is not a VOLUME ({volumes}): a read-only root could not hold the log")
    for p in problems:
        print(f"  {rel(DOCKERFILE)}: {p}")
    if problems:
        raise Failed(f"{len(problems)} problem(s)")
    print(f"final stage {base}, user {uid}, port {port}, volume {storage}, {len(dests)} context file(s) present")


# --- sysctl ---------------------------------------------------------------------------

def cmd_sysctl(path):
    path = Path(path)
    problems, keys, absent_optional = [], 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        optional = s.startswith("-")
        key, sep, value = s.lstrip("-").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            problems.append(f"{rel(path)}:{n}: not `key = value`: {s}")
            continue
        keys += 1
        proc = Path("/proc/sys") / key.replace(".", "/")
        if not proc.exists():
            if optional:
                absent_optional.append(key)
            else:
                problems.append(f"{rel(path)}:{n}: {key}: no {proc} in this kernel (misspelt?)")
        if not re.fullmatch(r"[0-9]+([ \t]+[0-9]+)*", value):
            problems.append(f"{rel(path)}:{n}: {key}: value {value!r} is not numeric")
    for p in problems:
        print("  " + p)
    if problems:
        raise Failed(f"{len(problems)} problem(s)")
    extra = f" ({', '.join(absent_optional)} optional, absent here)" if absent_optional else ""
    print(f"{keys} keys exist in /proc/sys{extra}")


# --- Kubernetes -----------------------------------------------------------------------

def validate_doc(path, doc, versions):
    """Error messages for one manifest; [] when it validates for every version."""
    errors = []
    kind = doc.get("kind")
    name = doc.get("metadata", {}).get("name", "?")
    where = f"{rel(path)} {kind}/{name}"
    if kind == "ServiceMonitor":
        schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
        for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            loc = ".".join(str(p) for p in e.absolute_path)
            errors.append(f"{where}: {loc}: {e.message} (own ServiceMonitor schema)")
        return errors
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            loc = ".".join(str(p) for p in e.path)
            errors.append(f"{where}: Kubernetes {e.version}: {loc}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    return errors


def cmd_k8s_schemas(rendered=None):
    if rendered:
        docs = [(Path(rendered), d) for d in load_yaml_docs(rendered)]
    else:
        docs = manifests()
    errors = []
    for path, doc in docs:
        errors += validate_doc(path, doc, K8S_VERSIONS)
    for e in errors:
        print("  " + e)
    if errors:
        raise Failed(f"{len(errors)} error(s)")
    kinds = sorted({d["kind"] for _, d in docs})
    what = "rendered objects" if rendered else "manifests"
    print(f"{len(docs)} {what} valid (strict) for Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)}: {', '.join(kinds)}"
          + ("; ServiceMonitor against deploy/check/servicemonitor.schema.json" if "ServiceMonitor" in kinds else ""))


def cmd_k8s_kustomization():
    listed = kustomization().get("resources", [])
    problems = []
    for name in listed:
        if not (KDIR / name).is_file():
            problems.append(f"kustomization.yaml lists {name}, which does not exist")
    if len(set(listed)) != len(listed):
        problems.append("kustomization.yaml lists a file twice")
    files = sorted(p.name for p in KDIR.iterdir() if p.suffix in (".yaml", ".yml"))
    examples = [f for f in files if f.endswith(".example.yaml")]
    for f in files:
        if f != "kustomization.yaml" and f not in listed and f not in examples:
            problems.append(f"{f} is neither listed in kustomization.yaml nor named *.example.yaml")
    for p in problems:
        print("  " + p)
    if problems:
        raise Failed(f"{len(problems)} problem(s)")
    print(f"{len(listed)} resources listed, {len(examples)} examples applied by hand ({', '.join(examples)})")


def pod_config(docs):
    cm = find(docs, "ConfigMap", "starling-config")
    return tomllib.loads(cm["data"]["config.toml"])


def cmd_k8s_policy():
    docs = manifests()
    problems = []
    def check(ok, msg):
        if not ok:
            problems.append(msg)
    dep = find(docs, "Deployment", "starling")
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    config = pod_config(docs)
    server = config.get("server", {})
    # The node reads every STARLING_* variable as a setting and stops on an unknown one:
    # service links would add STARLING_SERVICE_HOST and friends for the Service `starling`.
    check(pod.get("enableServiceLinks") is False, "Deployment: enableServiceLinks must be false (STARLING_SERVICE_HOST etc. would stop the node)")
    sc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, "Deployment: runAsNonRoot is not true")
    check(csc.get("readOnlyRootFilesystem") is True, "Deployment: readOnlyRootFilesystem is not true")
    check(csc.get("allowPrivilegeEscalation") is False, "Deployment: allowPrivilegeEscalation is not false")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), "Deployment: capabilities do not drop ALL")
    users = [a for w, a in dockerfile_instructions() if w == "USER"]
    image_uid = users[-1].split(":")[0] if users else None
    image_uid = int(image_uid) if image_uid and image_uid.isdigit() else image_uid
    check(sc.get("runAsUser") == image_uid, f"Deployment: runAsUser {sc.get('runAsUser')} differs from the image's USER {image_uid}")
    path = lambda probe: c.get(probe, {}).get("httpGet", {}).get("path")
    check(path("readinessProbe") == "/ready", f"Deployment: readiness probe on {path('readinessProbe')}, expected /ready")
    check(path("livenessProbe") == "/health", f"Deployment: liveness probe on {path('livenessProbe')}, expected /health (not /ready: a Redis outage would restart every pod)")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    check(isinstance(sleep, int) and sleep > 0, "Deployment: no preStop sleep")
    drain = server.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_TIMEOUT)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need = (sleep or 0) + drain + 5
    check(grace >= need, f"Deployment: terminationGracePeriodSeconds {grace} < preStop sleep {sleep} + server.shutdown_timeout_secs {drain} + 5")
    listen = server.get("listen", "127.0.0.1:8000")
    port = int(listen.rsplit(":", 1)[1])
    check(not listen.startswith("127."), f"ConfigMap: server.listen {listen} is loopback: probes and Services cannot reach it")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(port in ports.values(), f"Deployment: containerPort {list(ports.values())} differs from server.listen port {port}")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("STARLING_SERVER_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "Deployment: STARLING_SERVER_NAME does not come from metadata.name")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_vol = volumes.get(mounts.get("/etc/starling"), {})
    check(config_vol.get("configMap", {}).get("name") == "starling-config", "Deployment: /etc/starling is not the ConfigMap starling-config")
    check(c.get("args", [])[-2:] == ["--config", "/etc/starling/config.toml"], f"Deployment: args {c.get('args')} do not read /etc/starling/config.toml")
    storage = config.get("storage", {}).get("dir", DEFAULT_STORAGE_DIR)
    check(storage in mounts, f"Deployment: storage.dir {storage} is not a mounted volume (the root file system is read-only)")
    secret_refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    secret = find(docs, "Secret", "starling-secrets")
    check(secret["metadata"]["name"] in secret_refs, "Deployment: envFrom does not use the Secret starling-secrets")
    check(all(not e.get("secretRef", {}).get("optional") for e in c.get("envFrom", [])),
          "Deployment: the Secret must not be optional (a pod without its secrets must not start)")
    hpa = find(docs, "HorizontalPodAutoscaler")
    check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA: does not target the Deployment")
    check("replicas" not in dep["spec"], "Deployment: has replicas although the HPA owns the count (each apply would reset it)")
    check(dep["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable") == 0, "Deployment: maxUnavailable is not 0")
    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())
    sel = dep["spec"]["selector"]["matchLabels"]
    check(selects(sel, pod_labels), "Deployment: selector does not match its own pod labels")
    for kind in ("Service", "PodDisruptionBudget"):
        for _, d in docs:
            if d.get("kind") != kind:
                continue
            s = d["spec"]["selector"] if kind == "Service" else d["spec"]["selector"]["matchLabels"]
            check(selects(s, pod_labels), f"{kind} {d['metadata']['name']}: selector {s} does not match the pods")
            if kind == "Service":
                for p in d["spec"]["ports"]:
                    tp = p.get("targetPort")
                    check(tp in ports or tp in ports.values(), f"Service {d['metadata']['name']}: targetPort {tp} is not a container port")
    smon = find(docs, "ServiceMonitor")
    services = [d for _, d in docs if d.get("kind") == "Service"
                and selects(smon["spec"]["selector"]["matchLabels"], d["metadata"].get("labels", {}))]
    check(len(services) == 1, f"ServiceMonitor: selects {len(services)} Services, expected 1 (2 would scrape every pod twice)")
    if len(services) == 1:
        names = {p.get("name") for p in services[0]["spec"]["ports"]}
        for ep in smon["spec"]["endpoints"]:
            check(ep.get("port") in names, f"ServiceMonitor: port {ep.get('port')} is not a port name of Service {services[0]['metadata']['name']}")
            check(ep.get("path") == "/metrics", f"ServiceMonitor: path {ep.get('path')}, expected /metrics")
    ingress = [d for _, d in docs if d.get("kind") == "Ingress"]
    for ing in ingress:
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                check(not p["path"].startswith("/api") and p["path"] != "/metrics" and p["path"] != "/",
                      f"Ingress: {p['path']} would expose the HTTP API or /metrics publicly")
    for p in problems:
        print("  " + p)
    if problems:
        raise Failed(f"{len(problems)} problem(s)")
    print(f"grace {grace}s >= preStop {sleep}s + drain {drain}s + 5s; probes /ready and /health; "
          f"uid {image_uid} as in the image; port {port}; storage.dir mounted; service links off; "
          f"selectors match; ServiceMonitor selects 1 Service")


# --- Configurations through the binary -------------------------------------------------

def run_config(binary, toml_text, extra_env, label):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARLING_")}
    env.update(extra_env)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml_text)
        f.flush()
        r = subprocess.run([binary, "config", "--config", f.name], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise Failed(f"{label}: `starling config` exited {r.returncode}: {r.stderr.strip()}")
    return tomllib.loads(r.stdout)


def cmd_config(binary):
    docs = manifests()
    cm_text = find(docs, "ConfigMap", "starling-config")["data"]["config.toml"]
    secret = find(docs, "Secret", "starling-secrets")
    # The pod's environment: the downward API name and every key of the Secret example.
    env = {"STARLING_SERVER_NAME": "starling-5d9c7b8f6-x2x9q"}
    env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
    effective = run_config(binary, cm_text, env, "ConfigMap + Secret example")
    if effective["server"]["name"] != env["STARLING_SERVER_NAME"]:
        raise Failed(f"server.name is {effective['server']['name']!r}, not the pod name from STARLING_SERVER_NAME")
    # Kubernetes' service links for a Service named `starling` (why enableServiceLinks is
    # off): the node must refuse them, or that protection would be pointless to check.
    try:
        run_config(binary, cm_text, {**env, "STARLING_SERVICE_HOST": "10.0.0.1"}, "service link")
        print("  note: the binary accepted STARLING_SERVICE_HOST; enableServiceLinks: false is still kept")
    except Failed:
        pass
    image = run_config(binary, IMAGE_CONFIG.read_text(), {}, rel(IMAGE_CONFIG))
    print(f"{binary}: ConfigMap + Secret example accepted (engine {effective['cluster']['engine']}, "
          f"server.name from the pod), {rel(IMAGE_CONFIG)} accepted (listen {image['server']['listen']})")


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    table = {
        "dockerfile-policy": cmd_dockerfile_policy,
        "sysctl": cmd_sysctl,
        "k8s-schemas": cmd_k8s_schemas,
        "k8s-kustomization": cmd_k8s_kustomization,
        "k8s-policy": cmd_k8s_policy,
        "config": cmd_config,
    }
    if cmd not in table:
        print(f"unknown check {cmd}", file=sys.stderr)
        return 2
    try:
        table[cmd](*args)
    except Failed as e:
        print(str(e))
        return 1
    except (OSError, KeyError, IndexError, TypeError, ValueError, yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        print(f"cannot read the files: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
