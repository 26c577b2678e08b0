"""What ships beside the code: the Dockerfile and the Kubernetes examples in ``deploy/``.

No container runtime or cluster is needed: the manifests are parsed, and the command line
each gives modelpull is read by modelpull's own parser, so an example cannot drift into
flags that do not exist. (``test_packaging.py`` builds and installs the wheel itself.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpull.cli import build_parser
from modelpull.cli.main import hoist_options
from modelpull.cli.options import config_overrides
from modelpull.config import PullConfig

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DOCKERFILE = ROOT / "Dockerfile"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["spec"]["template"]["spec"]


def modelpull_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    every = [*spec.get("initContainers", []), *spec.get("containers", [])]
    return [c for c in every if "/modelpull:" in c["image"]]


def all_secrets() -> set[str]:
    return {d["metadata"]["name"] for m in MANIFESTS for d in documents(m) if d["kind"] == "Secret"}


def test_there_are_examples() -> None:
    assert [m.name for m in MANIFESTS] == ["vllm-emptydir.yaml", "vllm-hostpath.yaml"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_the_init_container_runs_a_pull_the_real_parser_reads(manifest: Path) -> None:
    specs = list(pod_specs(documents(manifest)))
    assert specs
    for spec in specs:
        pulls = modelpull_containers(spec)
        assert [c["name"] for c in pulls] == ["pull-model"]
        pull = pulls[0]
        assert pull in spec["initContainers"]  # it ends before the server starts
        # The image's entrypoint is modelpull: the args are its command line.
        assert "command" not in pull
        argv = [str(a) for a in pull["args"]]
        parser = build_parser()
        args = parser.parse_args(hoist_options(argv, parser))
        assert args.command == "pull"
        PullConfig.from_env({}, **config_overrides(args))  # every value valid
        # The folder it fills is the one the server reads, on a volume both mount.
        mounts = {m["name"]: m["mountPath"] for m in pull["volumeMounts"]}
        assert any(args.dest.startswith(path + "/") for path in mounts.values())
        server = spec["containers"][0]
        assert args.dest in [str(a) for a in server["args"]]
        served = {m["name"]: m for m in server["volumeMounts"]}
        assert set(mounts) <= set(served) and all(m.get("readOnly") for m in served.values())
        # What vLLM reads, and the metrics while the pull runs, on a named port.
        assert args.preset == "vllm"
        port = int(args.metrics_port)
        assert port in [p["containerPort"] for p in pull["ports"]]
        # Keys from a Secret, never written in the pod spec.
        assert {s["secretRef"]["name"] for s in pull["envFrom"]} <= all_secrets()
        assert not [e for e in pull.get("env", []) if "SECRET" in e["name"]]
        assert pull["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_slim_non_root_extras_entrypoint() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim$", text, re.MULTILINE)
    assert '"${wheel}[tos,metrics]"' in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    assert re.search(r'^ENTRYPOINT \["modelpull"\]$', text, re.MULTILINE)
    # The manifests run the image as the user it was built for.
    uid = int(users[-1].split(":")[0])
    for manifest in MANIFESTS:
        for spec in pod_specs(documents(manifest)):
            assert modelpull_containers(spec)[0]["securityContext"]["runAsUser"] == uid
