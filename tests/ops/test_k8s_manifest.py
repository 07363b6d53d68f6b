"""Checks of the Kubernetes example, which the project's machines cannot apply (no cluster):
its resources against the Kubernetes API schemas, and its text."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "ops" / "k8s" / "hiertcn-stream.yaml"


# An older Kubernetes release and the newest one that kubernetes-validate 1.37 has schemas for.
@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_resources_match_api_schema(version: str) -> None:
    documents = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]

    assert [doc["kind"] for doc in documents] == ["Service", "StatefulSet"]
    for document in documents:
        # strict=True rejects fields the schema does not define, such as a misspelled key.
        kubernetes_validate.validate(document, version, strict=True)


def test_referenced_variables_defined() -> None:
    text = MANIFEST.read_text()

    # Kubernetes leaves $(NAME) unexpanded when the container's env does not define NAME.
    referenced = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", text))
    defined = set(re.findall(r"^\s*- name: ([A-Z_][A-Z0-9_]*)$", text, flags=re.MULTILINE))

    assert "POD_NAME" in referenced
    assert referenced <= defined


def test_pod_name_from_downward_api() -> None:
    text = MANIFEST.read_text()

    expected = (
        "          env:\n"
        "            - name: POD_NAME\n"
        "              valueFrom:\n"
        "                fieldRef:\n"
        "                  fieldPath: metadata.name\n"
    )
    assert expected in text


def test_cpu_limit_sizes_onnx_threads() -> None:
    text = MANIFEST.read_text()

    assert '            limits:\n              cpu: "2"\n' in text
    assert "            - --processes=2\n" in text


def test_tmp_volume_mounted() -> None:
    text = MANIFEST.read_text()

    assert "            - name: tmp\n              mountPath: /tmp\n" in text
    assert "        - name: tmp\n          emptyDir: {}\n" in text


# The commented example of a Kafka password from a Secret, as its lines start in the manifest.
SECRET_ENV_LINES = [
    "            # - name: HIERTCN_KAFKA_SASL_PASSWORD\n",
    "            #   valueFrom:\n",
    "            #     secretKeyRef:\n",
    "            #       name: hiertcn-kafka\n",
    "            #       key: sasl-password\n",
]


def test_secret_env_example_matches_schema() -> None:
    text = MANIFEST.read_text()
    commented = "".join(SECRET_ENV_LINES)
    assert commented in text

    uncommented = "".join(line.replace("# ", "", 1) for line in SECRET_ENV_LINES)
    documents = [
        doc for doc in yaml.safe_load_all(text.replace(commented, uncommented)) if doc is not None
    ]
    statefulset = documents[1]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    secret_ref = {"name": "hiertcn-kafka", "key": "sasl-password"}
    password = {"name": "HIERTCN_KAFKA_SASL_PASSWORD", "valueFrom": {"secretKeyRef": secret_ref}}
    assert password in container["env"]
    for version in ["1.28.0", "1.37.0"]:
        kubernetes_validate.validate(statefulset, version, strict=True)
