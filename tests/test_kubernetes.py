"""The Kubernetes manifests in deploy/kubernetes: schema-valid, and doing what the README says.

Every document validates (strict: unknown fields are errors) against the Kubernetes schemas that
kubernetes-validate ships, for the oldest version we support and the newest it knows. Then the
warm-up workloads are checked for their contract: `prefetch sync --frozen` then `prefetch verify` on
the same lock and cache, non-root, resource requests, readiness tied to verify, the token only ever
from a Secret, and a ReadWriteMany claim for the shared-volume Job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
from kubernetes_validate.utils import SchemaNotFoundError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
OLDEST_SUPPORTED = "1.30.0"  # podFailurePolicy, sidecar-free init containers: fine from 1.30 on
PREFETCH_USER = 10001
HF_TOKEN_LITERAL = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def all_documents() -> list[Doc]:
    return [d for p in manifest_files() for d in documents(p)]


def one(kind: str) -> Doc:
    found = [d for d in all_documents() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {DEPLOY}, found {len(found)}"
    return found[0]


def validation_versions() -> list[str]:
    latest = kubernetes_validate.latest_version()
    return [OLDEST_SUPPORTED] if latest == OLDEST_SUPPORTED else [OLDEST_SUPPORTED, latest]


# ------------------------------------------------------------------------------------------ schemas
def test_there_are_manifests() -> None:
    names = {p.name for p in manifest_files()}
    assert {"daemonset.yaml", "job-shared-volume.yaml"} <= names, names


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        for version in validation_versions():
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


def prefetch_calls(words: list[str]) -> Iterator[list[str]]:
    """The `prefetch ...` invocations of an argv, looking inside `sh -c "a && b"` scripts."""
    if len(words) >= 3 and words[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and words[1] == "-c":
        script = words[2]
        for part in re.split(r"&&|\|\||;", script):
            yield from prefetch_calls(shlex.split(part))
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


def check_sync_then_verify(workload: Doc) -> tuple[Doc, Doc]:
    """Exactly `prefetch sync MANIFEST --frozen` then `prefetch verify LOCK`, on the same lock and cache.

    Returns the sync container and the verify container.
    """
    calls = workload_calls(workload)
    subcommands = [call[0] for _, call in calls]
    assert subcommands == ["sync", "verify"], f"prefetch commands run in order: {calls}"
    (sync_name, sync), (verify_name, verify) = calls
    assert "--frozen" in sync, f"sync must use the lockfile exactly (--frozen): {sync}"
    for banned in ("--offline", "--token-file"):
        assert banned not in sync, sync
    by_name = {c["name"]: c for c in containers(workload)}
    sync_c, verify_c = by_name[sync_name], by_name[verify_name]

    manifest = positionals(sync)[0]
    lock = option(sync, "--lock") or str(Path(manifest).with_suffix(".lock"))
    verify_lock = positionals(verify)[0] if positionals(verify) else "models.lock"
    assert verify_lock == lock, f"verify checks {verify_lock}, sync writes/uses {lock}"
    cache = option(sync, "--cache-dir")
    assert cache and option(verify, "--cache-dir") == cache, (sync, verify)

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


def check_token_from_secret(workload: Doc, sync_c: Doc) -> None:
    for c in containers(workload):
        for env in c.get("env", []):
            if re.search(r"TOKEN|SECRET", env["name"], re.I):
                assert "value" not in env, f"{c['name']}: {env['name']} is a literal"
                source = env.get("valueFrom", {})
                assert "secretKeyRef" in source, f"{c['name']}: {env['name']} not from a Secret"
                assert c is sync_c, f"only the sync container needs the token, not {c['name']}"
    names = [e["name"] for e in sync_c.get("env", [])]
    assert "HF_TOKEN" in names, "sync gets HF_TOKEN from the Secret"


def test_no_token_literal_anywhere() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not HF_TOKEN_LITERAL.search(text), f"{path} contains what looks like a Hub token"


# ------------------------------------------------------------------------------------------ DaemonSet
def test_daemonset_syncs_frozen_then_verifies() -> None:
    ds = one("DaemonSet")
    sync_c, verify_c = check_sync_then_verify(ds)
    spec = pod_spec(ds)
    sync_names = [c["name"] for c in spec.get("initContainers", [])]
    assert sync_c["name"] in sync_names, "sync runs to completion in an init container"
    assert verify_c in spec["containers"], "verify runs in the long-running container"
    # the long-running container stays up once verified: it must not just exit (a DaemonSet restarts it)
    assert "sleep infinity" in " ".join(argv(verify_c)), argv(verify_c)


def test_daemonset_warms_a_node_local_cache() -> None:
    ds = one("DaemonSet")
    sync_c, _ = check_sync_then_verify(ds)
    cache = option(next(prefetch_calls(argv(sync_c))), "--cache-dir") or ""
    cache_vol = volume(ds, mount_of(sync_c, cache)["name"])
    if "hostPath" in cache_vol:
        assert cache_vol["hostPath"]["path"].startswith("/"), cache_vol
    else:  # a local PV through a claim is fine too
        assert "persistentVolumeClaim" in cache_vol, cache_vol


def test_daemonset_readiness_is_verify() -> None:
    ds = one("DaemonSet")
    _, verify_c = check_sync_then_verify(ds)
    probe = verify_c.get("readinessProbe", {})
    cmd = [str(a) for a in probe.get("exec", {}).get("command", [])]
    calls = list(prefetch_calls(cmd))
    assert calls and calls[-1][0] == "verify", f"readiness probe should run prefetch verify: {cmd}"
    lock = positionals(next(prefetch_calls(argv(verify_c))))[0]
    assert positionals(calls[-1])[0] == lock


def test_daemonset_is_non_root_with_requests() -> None:
    check_security_and_resources(one("DaemonSet"), allowed_root=frozenset({"prepare-cache"}))


def test_daemonset_token_from_secret() -> None:
    ds = one("DaemonSet")
    sync_c, _ = check_sync_then_verify(ds)
    check_token_from_secret(ds, sync_c)


def test_daemonset_and_job_read_the_same_configmap_keys() -> None:
    names = set()
    for kind in ("DaemonSet", "Job"):
        for v in pod_spec(one(kind)).get("volumes", []):
            if "configMap" in v:
                names.add(v["configMap"]["name"])
    assert names == {"prefetch-models"}, names
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "prefetch-models" in readme and "--from-file=models.lock" in readme


# ------------------------------------------------------------------------------------------------ Job
def test_job_fills_a_read_write_many_claim() -> None:
    job = one("Job")
    sync_c, _ = check_sync_then_verify(job)
    cache = option(next(prefetch_calls(argv(sync_c))), "--cache-dir") or ""
    vol = volume(job, mount_of(sync_c, cache)["name"])
    claim = vol["persistentVolumeClaim"]["claimName"]
    pvcs = {d["metadata"]["name"]: d for d in all_documents() if d.get("kind") == "PersistentVolumeClaim"}
    assert claim in pvcs, f"claim {claim} is not defined in {DEPLOY}"
    assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"]
    assert pvcs[claim]["metadata"].get("namespace") == job["metadata"].get("namespace")


def test_job_is_non_root_with_requests_and_token_from_secret() -> None:
    job = one("Job")
    check_security_and_resources(job)
    sync_c, _ = check_sync_then_verify(job)
    check_token_from_secret(job, sync_c)
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = job["spec"].get("podFailurePolicy", {}).get("rules", [])
    fail_codes = {
        code for r in rules if r["action"] == "FailJob" for code in r.get("onExitCodes", {}).get("values", [])
    }
    assert 6 in fail_codes, "an outdated lockfile (exit 6) cannot be fixed by a retry"
    assert any(r["action"] == "Ignore" for r in rules), "preemption must not count as a failure"


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
    ):
        assert needle in readme, f"deploy/kubernetes/README.md should mention {needle!r}"
