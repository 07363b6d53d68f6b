"""Text checks of the Kubernetes example, which the project's machines cannot apply (no cluster,
and PyYAML is not a dependency)."""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST = Path(__file__).resolve().parents[2] / "ops" / "k8s" / "hiertcn-stream.yaml"


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
