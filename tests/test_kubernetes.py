"""The Kubernetes manifests in deploy/kubernetes: schema-valid, and doing what the README says.

Every document validates (strict: unknown fields are errors) against the Kubernetes schemas that
kubernetes-validate ships, for the oldest version we support and the newest it knows. Then the
warm-up workloads are checked for their contract: `prefetch sync --frozen` then `prefetch verify` on
the same lock and cache (the DaemonSet also prunes to the lock and watches the cache), non-root,
small lifetime requests, readiness tied to the pod's own lock with a tolerant probe, the token only
ever as the Secret file /run/secrets/hf_token (not optional), node selection with and without GPU
feature discovery, a non-preempting priority class, the pull-through mirror they point at, and a
ReadWriteMany claim for the shared-volume Job. Where kubectl is installed, the kustomize overlay of
docs/examples/fleet is rendered: a new lock gives a new ConfigMap name, hence a new pod template.
The pods' commands themselves run under podman in tests/test_docker.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
from kubernetes_validate.utils import SchemaNotFoundError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
OLDEST_SUPPORTED = "1.30.0"  # podFailurePolicy, sidecar-free init containers: fine from 1.30 on
# Files that need a newer Kubernetes than OLDEST_SUPPORTED, validated from that version on.
NEWER = {"image-volume.yaml": "1.31.0"}  # `volumes[].image` (KEP-4639): its schema exists from 1.31
PREFETCH_USER = 10001
HF_TOKEN_LITERAL = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")

Doc = dict[str, Any]


KUSTOMIZE_API = "kustomize.config.k8s.io/"


def manifest_files() -> list[Path]:
    """Kubernetes objects; kustomization.yaml is kustomize's own input, checked separately."""
    return sorted(
        p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"
    )


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def all_documents() -> list[Doc]:
    return [d for p in manifest_files() for d in documents(p)]


def one(kind: str) -> Doc:
    found = [d for d in all_documents() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {DEPLOY}, found {len(found)}"
    return found[0]


def named(kind: str, name: str) -> Doc:
    found = [d for d in all_documents() if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in {DEPLOY}, found {len(found)}"
    return found[0]


def validation_versions(path: Path | None = None) -> list[str]:
    oldest = NEWER.get(path.name, OLDEST_SUPPORTED) if path else OLDEST_SUPPORTED
    latest = kubernetes_validate.latest_version()
    return [oldest] if latest == oldest else [oldest, latest]


# ------------------------------------------------------------------------------------------ schemas
def test_there_are_manifests() -> None:
    names = {p.name for p in manifest_files()}
    assert {
        "daemonset.yaml",
        "job-shared-volume.yaml",
        "mirror.yaml",
        "priorityclass.yaml",
        "image-volume.yaml",
    } <= names, names


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        for version in validation_versions(path):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError as e:  # a CRD or a typo in kind/apiVersion: not checkable, so fail
                pytest.fail(f"{path.name}: {e.message}")
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{path.name}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                    f"Kubernetes {version} at {where}: {e.message}"
                )


def test_strict_validation_rejects_unknown_fields() -> None:
    """The check above can fail: a misspelt field is caught, not ignored."""
    bad = one("DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(bad))
    bad["spec"]["template"]["spec"]["containers"][0]["comand"] = ["prefetch"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, OLDEST_SUPPORTED, strict=True)


# ---------------------------------------------------------------------------------- what runs where
def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    """Init containers then containers, in the order the kubelet starts them."""
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def argv(container: Doc) -> list[str]:
    return [str(a) for a in [*container.get("command", []), *container.get("args", [])]]


SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")
GLOBAL_OPTIONS = ("-q", "--quiet", "-v", "-vv", "--verbose", "--json")
PREFETCH_CALL = re.compile(r"(?:^|[\s;&|!(])(?:/opt/prefetch/bin/)?prefetch\s+([^;&|\n]*)")
ASSIGNMENT = re.compile(r"\b([a-z_]+)=(\S+)")


def script_calls(script: str) -> Iterator[list[str]]:
    """The `prefetch ...` commands of a shell script, with its simple `name=value` variables expanded."""
    variables = dict(ASSIGNMENT.findall(script))
    for name, value in variables.items():
        script = script.replace(f'"${name}"', value).replace(f"${{{name}}}", value).replace(f"${name}", value)
    for m in PREFETCH_CALL.finditer(script):
        words = shlex.split(m.group(1))
        while words and words[0] in GLOBAL_OPTIONS:
            words = words[1:]
        yield words


def prefetch_calls(words: list[str]) -> Iterator[list[str]]:
    """The `prefetch ...` invocations of an argv, looking inside `sh -c SCRIPT`."""
    if len(words) >= 3 and words[0] in SHELLS and words[1] == "-c":
        yield from script_calls(words[2])
        return
    if words and words[0] in ("prefetch", "/opt/prefetch/bin/prefetch"):
        yield words[1:]


def workload_calls(workload: Doc) -> list[tuple[str, list[str]]]:
    return [(c["name"], call) for c in containers(workload) for call in prefetch_calls(argv(c))]


def option(call: list[str], name: str) -> str | None:
    for i, word in enumerate(call):
        if word == name and i + 1 < len(call):
            return call[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def positionals(call: list[str]) -> list[str]:
    takes_value = {"--lock", "--cache-dir", "--jobs", "--token-file", "--proxy"}
    out, skip = [], False
    for word in call[1:]:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def mount_of(container: Doc, path: str) -> Doc:
    """The volumeMount that holds `path` inside the container."""
    best: Doc | None = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    assert best is not None, f"{container['name']}: nothing mounted at {path}"
    return best


def volume(workload: Doc, name: str) -> Doc:
    for v in pod_spec(workload).get("volumes", []):
        if v["name"] == name:
            found: Doc = v
            return found
    raise AssertionError(f"no volume {name!r}")


def check_sync_then_verify(workload: Doc, expected: list[str]) -> tuple[Doc, Doc]:
    """`prefetch sync MANIFEST --frozen` ... `prefetch verify LOCK`, every call on the same lock and cache.

    `expected` is the order of the subcommands. Returns the sync container and the container of the
    first full (not --fast) verify.
    """
    calls = workload_calls(workload)
    subcommands = [call[0] for _, call in calls]
    assert subcommands == expected, f"prefetch commands run in order: {calls}"
    sync_name, sync = next((n, c) for n, c in calls if c[0] == "sync")
    verify_name = next(n for n, c in calls if c[0] == "verify" and "--fast" not in c)
    assert "--frozen" in sync, f"sync must use the lockfile exactly (--frozen): {sync}"
    for banned in ("--offline", "--token-file", "--endpoint"):
        assert banned not in sync, sync
    by_name = {c["name"]: c for c in containers(workload)}
    sync_c, verify_c = by_name[sync_name], by_name[verify_name]

    manifest = positionals(sync)[0]
    lock = option(sync, "--lock") or str(Path(manifest).with_suffix(".lock"))
    cache = option(sync, "--cache-dir")
    assert cache, sync
    for _, call in calls:
        if call[0] == "prune":
            assert option(call, "--lock") == lock, f"prune keeps what the lock names: {call}"
        elif call[0] == "verify":
            assert (positionals(call) or ["models.lock"])[0] == lock, (
                f"verify checks {call}, sync uses {lock}"
            )
        assert option(call, "--cache-dir") == cache, (call, cache)

    # manifest and lock come from the ConfigMap; the cache is the same volume in both containers
    for path in (manifest, lock):
        for c in (sync_c, verify_c) if path == lock else (sync_c,):
            vol = volume(workload, mount_of(c, path)["name"])
            assert "configMap" in vol, f"{path} in {c['name']} should come from the ConfigMap: {vol}"
    assert mount_of(sync_c, cache)["name"] == mount_of(verify_c, cache)["name"]
    assert not mount_of(sync_c, cache).get("readOnly"), "sync must write the cache"
    return sync_c, verify_c


def effective(container: Doc, workload: Doc, key: str) -> Any:
    own = container.get("securityContext", {})
    return own[key] if key in own else pod_spec(workload).get("securityContext", {}).get(key)


def check_security_and_resources(workload: Doc, allowed_root: frozenset[str] = frozenset()) -> None:
    pod_sc = pod_spec(workload).get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True, pod_sc
    assert pod_sc.get("runAsUser") == PREFETCH_USER, pod_sc
    assert pod_spec(workload).get("automountServiceAccountToken") is False
    for c in containers(workload):
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
        assert not sc.get("privileged"), c["name"]
        if c["name"] in allowed_root:
            # the one root step: chown of the cache directory, nothing else, CHOWN only
            assert argv(c)[0] == "chown" and not list(prefetch_calls(argv(c))), argv(c)
            assert sc.get("capabilities", {}).get("add") == ["CHOWN"], sc
        else:
            assert effective(c, workload, "runAsNonRoot") is True, c["name"]
            assert effective(c, workload, "runAsUser") not in (0, None), c["name"]
        requests = c.get("resources", {}).get("requests", {})
        assert {"cpu", "memory"} <= requests.keys(), f"{c['name']} lacks resource requests: {requests}"
        assert "memory" in c.get("resources", {}).get("limits", {}), f"{c['name']} lacks a memory limit"


def check_token_from_secret_file(workload: Doc, sync_c: Doc) -> None:
    """The token reaches sync only as /run/secrets/hf_token from a Secret that is not optional (a typo
    in its name must stop the pod with a clear event, not run it without a token), never as a variable."""
    for c in containers(workload):
        for env in c.get("env", []):
            assert not re.search(r"TOKEN|SECRET", env["name"], re.I), f"{c['name']}: {env['name']} in env"
        for m in c.get("volumeMounts", []):
            if "secret" in volume(workload, m["name"]):
                assert c is sync_c, f"only the syncing container needs the token, not {c['name']}"
    mount = mount_of(sync_c, "/run/secrets/hf_token")
    assert mount.get("readOnly") is True and mount["mountPath"] == "/run/secrets", mount
    secret = volume(workload, mount["name"])["secret"]
    assert secret["secretName"] == "hf-token" and not secret.get("optional"), secret
    assert {"key": "token", "path": "hf_token"} in secret["items"], secret
    # readable by the pod's group only: fsGroup 10001, mode 0440 (no world bits)
    assert pod_spec(workload)["securityContext"].get("fsGroup") == PREFETCH_USER
    assert secret["defaultMode"] & 0o007 == 0 and secret["defaultMode"] & 0o040, oct(secret["defaultMode"])


def check_points_at_the_mirror(workload: Doc, sync_c: Doc) -> None:
    """HF_ENDPOINT of the syncing container is the mirror Service of mirror.yaml, at its port."""
    endpoint = next(e["value"] for e in sync_c["env"] if e["name"] == "HF_ENDPOINT")
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", endpoint)
    assert m, endpoint
    service = next(
        d for d in all_documents() if d["kind"] == "Service" and d["metadata"]["name"] == m.group(1)
    )
    assert service["metadata"]["namespace"] == m.group(2) == workload["metadata"]["namespace"]
    assert int(m.group(3)) in [p["port"] for p in service["spec"]["ports"]]


def test_no_token_literal_anywhere() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not HF_TOKEN_LITERAL.search(text), f"{path} contains what looks like a Hub token"


# ------------------------------------------------------------------------------------------ DaemonSet
# repair(): the guard's prune, sync, prune, verify --fast; the start: verify, prune; the watch: verify
DAEMONSET_CALLS = ["prune", "sync", "prune", "verify", "verify", "prune", "verify"]
READY_MARKER = re.compile(r"\bready=(\S+)")


def warm_script() -> str:
    ds = one("DaemonSet")
    check_sync_then_verify(ds, DAEMONSET_CALLS)
    return argv(pod_spec(ds)["containers"][0])[2]


def test_daemonset_syncs_frozen_prunes_verifies_and_watches() -> None:
    """One long-running container: a full verify decides (only hashes see a blob corrupted in place),
    the repair is the disk guard's prune, `sync --frozen --verify` (which fetches a corrupt cached
    blob again), prune to the lock and `verify --fast`; then the watch loop checks and repairs."""
    ds = one("DaemonSet")
    sync_c, verify_c = check_sync_then_verify(ds, DAEMONSET_CALLS)
    spec = pod_spec(ds)
    assert sync_c is verify_c and sync_c in spec["containers"], "sync runs where it can run again (repair)"
    calls = [call for _, call in workload_calls(ds)]
    assert "--verify" in calls[1], f"sync must hash what is cached, or a corrupt blob stays: {calls[1]}"
    assert "--fast" not in calls[4], f"the start must hash: {calls[4]}"
    script = argv(sync_c)[2]
    assert "set -e" in script, "a failing step must end the container with prefetch's exit code"
    assert "exit 8" in script, script
    loop = script[script.index("while :; do") :]
    assert 'run sleep "$CHECK_SECONDS"' in loop and "--fast" in loop and "VERIFY_SECONDS" in loop, loop
    assert "repair" in loop and "exit 7" not in script, "a failed check repairs in place, no restart"
    assert [c["name"] for c in spec.get("initContainers", [])] == ["prepare-cache"]


def test_daemonset_passes_sigterm_to_prefetch() -> None:
    """The shell is PID 1, which gets no signal it does not trap, and runs a trap only once its
    foreground command ends: every command runs in the background through `run`, whose wait a
    trapped SIGTERM interrupts and passes on. (The podman test proves the timing.)"""
    script = warm_script()
    assert re.search(r"^\s*trap '.*kill -TERM \"\$child\".*' TERM", script, re.M), script
    assert re.search(r'^\s*"\$@" &\n\s*child=\$!', script, re.M), script
    for line in script.splitlines():
        if PREFETCH_CALL.search(line) and not line.strip().startswith("#"):
            assert re.search(r"\brun prefetch ", line), f"runs in the foreground, deaf to SIGTERM: {line}"
    assert "run sleep" in script


def test_daemonset_readiness_is_the_pods_own_lock() -> None:
    """Ready = the script verified the lock this pod was started with (its ConfigMap is immutable and
    named by its content) and no check failed since: it removes a marker on the pod's emptyDir first,
    writes it once the start's verify or repair passed, removes it when a check fails. The probe only
    reads the marker (free, however big the cache) and turns a failed check into NotReady quickly."""
    ds = one("DaemonSet")
    _, verify_c = check_sync_then_verify(ds, DAEMONSET_CALLS)
    script = argv(verify_c)[2]
    marker = READY_MARKER.search(script)
    assert marker, script
    probe = verify_c["readinessProbe"]
    assert probe["exec"]["command"] == ["test", "-e", marker.group(1)], probe
    assert "emptyDir" in volume(ds, mount_of(verify_c, marker.group(1))["name"])
    assert volume(ds, mount_of(verify_c, "/etc/prefetch/models.lock")["name"])["configMap"]
    removed, written = 'rm -f "$ready"', 'touch "$ready"'
    first_check = script.index("if run prefetch -q verify")
    assert script.index(removed) < first_check < script.index(written), "no marker before the start's verify"
    loop = script[script.index("while :; do") :]
    assert loop.index(removed) < loop.index("repair") < loop.index(written), loop
    assert probe["failureThreshold"] * probe["periodSeconds"] <= 30, "NotReady soon after a failed check"
    assert probe["timeoutSeconds"] >= 5 and probe["periodSeconds"] >= probe["timeoutSeconds"], probe
    assert ds["spec"].get("minReadySeconds", 0) > 0


def test_daemonset_rolls_out_under_max_unavailable() -> None:
    strategy = one("DaemonSet")["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] not in (0, "0%", "100%"), strategy


def test_daemonset_is_non_root_with_small_lifetime_requests() -> None:
    ds = one("DaemonSet")
    check_security_and_resources(ds, allowed_root=frozenset({"prepare-cache"}))

    # The pod's effective request is max(each init container, sum of containers) for its whole life:
    # no init container may ask for more than the long-running containers do.
    def quantity(value: str) -> float:
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        for suffix, factor in units.items():
            if value.endswith(suffix):
                return float(value[: -len(suffix)]) * factor
        return float(value)

    spec = pod_spec(ds)
    for resource in ("cpu", "memory"):
        running = sum(quantity(c["resources"]["requests"][resource]) for c in spec["containers"])
        for init in spec.get("initContainers", []):
            assert quantity(init["resources"]["requests"][resource]) <= running, (init["name"], resource)
        assert running <= quantity({"cpu": "100m", "memory": "256Mi"}[resource]), (resource, running)


def test_daemonset_token_from_secret_file() -> None:
    ds = one("DaemonSet")
    sync_c, _ = check_sync_then_verify(ds, DAEMONSET_CALLS)
    check_token_from_secret_file(ds, sync_c)


def test_daemonset_selects_gpu_nodes_with_or_without_feature_discovery() -> None:
    spec = pod_spec(one("DaemonSet"))
    assert "nodeSelector" not in spec, "a nodeSelector is ANDed: one missing label and no pod is scheduled"
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = [e["key"] for t in terms for e in t["matchExpressions"]]
    assert all(len(t["matchExpressions"]) == 1 for t in terms), "each term alone selects (terms are ORed)"
    assert "nvidia.com/gpu.present" in keys, "GPU feature discovery's label"
    assert "prefetch.dev/warm" in keys, "a label an admin sets by hand, for clusters without discovery"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for key in keys:
        assert key in readme, f"README.md should explain the node label {key}"


def test_daemonset_priority_class_never_preempts_and_yields_to_workloads() -> None:
    name = pod_spec(one("DaemonSet"))["priorityClassName"]
    pc = one("PriorityClass")
    assert pc["metadata"]["name"] == name
    assert pc["value"] < 0 and pc["preemptionPolicy"] == "Never" and pc.get("globalDefault") is False


def test_daemonset_disk_guard_and_documented_eviction() -> None:
    ds = one("DaemonSet")
    warm = pod_spec(ds)["containers"][0]
    env = {e["name"]: e.get("value") for e in warm["env"]}
    assert 10 < int(env["MIN_FREE_PERCENT"]) < 100, "above the kubelet's default nodefs.available<10%"
    assert "MIN_FREE_PERCENT" in argv(warm)[2]
    assert 0 < int(env["CHECK_SECONDS"]) < int(env["VERIFY_SECONDS"]), "the full verify is the rare one"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "MIN_FREE_PERCENT",
        "disk-pressure",
        "evict",
        "prefetch prune --lock",
        "CHECK_SECONDS",
        "VERIFY_SECONDS",
        "SIGTERM",
    ):
        assert needle in readme, f"README.md should document {needle!r}"
    assert "hf cache" not in readme, "prune with prefetch prune --lock, which knows the lock"


def test_daemonset_and_job_download_through_the_mirror() -> None:
    for kind, calls in (("DaemonSet", DAEMONSET_CALLS), ("Job", ["sync", "verify"])):
        workload = one(kind)
        sync_c, _ = check_sync_then_verify(workload, calls)
        check_points_at_the_mirror(workload, sync_c)


def test_daemonset_and_job_read_the_same_configmap_keys() -> None:
    names = set()
    for kind in ("DaemonSet", "Job"):
        for v in pod_spec(one(kind)).get("volumes", []):
            if "configMap" in v:
                names.add(v["configMap"]["name"])
    assert names == {"prefetch-models"}, names
    overlay = yaml.safe_load((FLEET_EXAMPLE / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = {g["name"]: g for g in overlay["configMapGenerator"]}
    assert generated["prefetch-models"]["files"] == ["models.yaml", "models.lock"]
    assert generated["prefetch-models"]["options"]["immutable"] is True


# --------------------------------------------------------------------------------------------- mirror
def test_mirror_serves_on_its_service_with_its_cache_on_a_volume() -> None:
    deployment = named("Deployment", "hf-mirror")
    spec = pod_spec(deployment)
    olah = spec["containers"][0]
    config_mount = mount_of(olah, "/etc/olah/configs.toml")
    config_map = volume(deployment, config_mount["name"])["configMap"]["name"]
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = {g["name"]: g for g in base["configMapGenerator"]}
    source = generated[config_map]["files"][0].split("=", 1)[1]
    config = tomllib.loads((DEPLOY / source).read_text(encoding="utf-8"))["basic"]
    assert olah["ports"][0]["containerPort"] == config["port"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]["port"]
    assert config["mirror-netloc"] == f"{name}.{namespace}.svc.cluster.local:{port}", config
    cache_volume = volume(deployment, mount_of(olah, config["repos-path"])["name"])
    assert "persistentVolumeClaim" in cache_volume, "the mirror's cache outlives its pod"
    assert "--config" in argv(olah) and "/etc/olah/configs.toml" in argv(olah)
    check_security_and_resources_of(deployment)


def check_security_and_resources_of(workload: Doc) -> None:
    for c in containers(workload):
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == [
            "ALL"
        ]
        assert effective(c, workload, "runAsNonRoot") is True
        assert c["readinessProbe"] and c["resources"]["limits"]["memory"]


# ------------------------------------------------------------------------------------------ kustomize
FLEET_EXAMPLE = ROOT / "docs" / "examples" / "fleet"


def kustomize(overlay: Path) -> list[Doc]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    """docs/examples/fleet beside a copy of deploy/, as in the repository, with a manifest and lock."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (its built-in kustomize renders the overlay)")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    folder = tmp_path / "docs" / "examples" / "fleet"
    shutil.copytree(FLEET_EXAMPLE, folder)
    (folder / "models.yaml").write_text("version: 1\nrepos:\n  - repo: acme/model\n")
    (folder / "models.lock").write_text("# lock A\n")
    return folder


def test_overlay_gives_each_lock_its_own_configmap_and_pod_template(overlay: Path) -> None:
    def rendered() -> tuple[str, Doc, list[Doc]]:
        docs = kustomize(overlay)
        ds = next(d for d in docs if d["kind"] == "DaemonSet")
        maps = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("prefetch-models-")
        ]
        assert len(maps) == 1 and maps[0].get("immutable") is True, maps
        used = next(v["configMap"]["name"] for v in pod_spec(ds)["volumes"] if "configMap" in v)
        assert used == maps[0]["metadata"]["name"], "the DaemonSet mounts the generated ConfigMap"
        assert maps[0]["data"]["models.lock"] == (overlay / "models.lock").read_text()
        return used, ds, docs

    first, ds_a, docs = rendered()
    for doc in docs:
        for version in validation_versions():
            kubernetes_validate.validate(doc, version, strict=True)
    mirror_config = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("hf-mirror-config-")
    ]
    assert len(mirror_config) == 1
    (overlay / "models.lock").write_text("# lock B\n")
    second, ds_b, _ = rendered()
    assert first != second, "a new lock must be a new ConfigMap name"
    assert ds_a["spec"]["template"] != ds_b["spec"]["template"], "... hence a new pod template (a rollout)"
    assert ds_a["spec"]["updateStrategy"] == ds_b["spec"]["updateStrategy"]


# ------------------------------------------------------------------------------------------------ Job
def test_job_fills_a_read_write_many_claim() -> None:
    job = one("Job")
    sync_c, _ = check_sync_then_verify(job, ["sync", "verify"])
    cache = option(next(prefetch_calls(argv(sync_c))), "--cache-dir") or ""
    vol = volume(job, mount_of(sync_c, cache)["name"])
    claim = vol["persistentVolumeClaim"]["claimName"]
    pvcs = {d["metadata"]["name"]: d for d in all_documents() if d.get("kind") == "PersistentVolumeClaim"}
    assert claim in pvcs, f"claim {claim} is not defined in {DEPLOY}"
    assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"]
    assert pvcs[claim]["metadata"].get("namespace") == job["metadata"].get("namespace")


def test_job_is_non_root_with_requests_and_token_from_secret_file() -> None:
    job = one("Job")
    check_security_and_resources(job)
    sync_c, _ = check_sync_then_verify(job, ["sync", "verify"])
    check_token_from_secret_file(job, sync_c)
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = job["spec"].get("podFailurePolicy", {}).get("rules", [])
    fail_codes = {
        code for r in rules if r["action"] == "FailJob" for code in r.get("onExitCodes", {}).get("values", [])
    }
    assert 6 in fail_codes, "an outdated lockfile (exit 6) cannot be fixed by a retry"
    assert any(r["action"] == "Ignore" for r in rules), "preemption must not count as a failure"


# ------------------------------------------------------------------------------------- image volumes
def test_image_volume_deployment_reads_the_mounted_cache_offline() -> None:
    """The registry path: the image-volume profile's image mounted read-only where HF_HUB_CACHE points,
    HF_HUB_OFFLINE=1, no token anywhere, and no more privilege than a server needs. (That such an image
    mounts and huggingface_hub loads from it offline is tests/test_oci.py's podman test.)"""
    workload = named("Deployment", "inference-from-image-volume")
    spec = pod_spec(workload)
    (server,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in server.get("env", [])}
    assert env["HF_HUB_OFFLINE"] == "1"
    mount = mount_of(server, env["HF_HUB_CACHE"])
    assert mount["mountPath"] == env["HF_HUB_CACHE"] and mount.get("readOnly") is True, mount
    image = volume(workload, mount["name"])["image"]
    assert re.fullmatch(
        r"[a-z0-9.-]+(:\d+)?/[a-z0-9/._-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image["reference"]
    )
    assert image.get("pullPolicy") == "IfNotPresent"
    assert not any(re.search(r"TOKEN|SECRET", name, re.I) for name in env)
    assert not any("secret" in v for v in spec.get("volumes", []))
    assert (
        spec["securityContext"]["runAsNonRoot"] is True and spec.get("automountServiceAccountToken") is False
    )
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["securityContext"]["capabilities"]["drop"] == ["ALL"]
    text = (DEPLOY / "image-volume.yaml").read_text(encoding="utf-8")
    assert "prefetch push --profile image-volume" in text
    with pytest.raises(kubernetes_validate.ValidationError):  # why NEWER names it: 1.30 has no image volume
        kubernetes_validate.validate(workload, OLDEST_SUPPORTED, strict=True)


# --------------------------------------------------------------------------------------------- README
def test_readme_documents_commands_and_trusted_filesystems() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "prefetch sync",
        "--frozen",
        "prefetch verify",
        "ReadWriteMany",
        "flock",
        "NFSv4",
        "CephFS",
        "Lustre",
        "GPFS",
        "HF_HUB_OFFLINE=1",
        "kubectl -n prefetch create secret",
        "kubectl apply -k",
        "maxUnavailable",
        "docs/fleet.md",
    ):
        assert needle in readme, f"deploy/kubernetes/README.md should mention {needle!r}"


def test_fleet_doc_covers_mirror_p2p_and_a_rollout_walkthrough() -> None:
    doc = (ROOT / "docs" / "fleet.md").read_text(encoding="utf-8")
    for needle in (
        "maxUnavailable",
        "minReadySeconds",
        "immutable",
        "kubectl apply -k",
        "rollout undo",
        "olah",
        "not trusted",
        "dfdaemon",
        "--proxy",
        "SSL_CERT_FILE",
        "restartPolicy: Always",
        "MIN_FREE_PERCENT",
        "test_daemonset_rolls_a_new_lock_out_node_by_node",
    ):
        assert needle in doc, f"docs/fleet.md should cover {needle!r}"
