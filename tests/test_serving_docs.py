"""Runs every command of docs/serving.md, in order, as written."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

_DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md")


def _blocks():
    with open(_DOC) as file:
        return re.findall(r"```(python|sh)\n(.*?)```", file.read(), re.S)


@pytest.mark.slow
def test_every_command_of_the_serving_page_runs(tmp_path):
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable)
        + os.pathsep
        + os.environ["PATH"],
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(_DOC))),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    blocks = _blocks()
    assert [kind for kind, _ in blocks].count("sh") == 2
    outputs = []
    for kind, code in blocks:
        command = (
            [sys.executable, "-c", code]
            if kind == "python"
            else ["bash", "-e", "-c", code]
        )
        outputs.append(
            subprocess.run(
                command,
                cwd=tmp_path,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    assert os.listdir(tmp_path / "serving" / "student") == ["1"]
    assert "inputs['pixels']" in outputs[1]
    assert "outputs['logits_probabilities']" in outputs[1]
    assert "logits" in outputs[2]

    # The REST body of the page, against the signature: one entry per
    # example, keyed by the input's name, of the input's inner shape.
    signature = tf.saved_model.load(
        str(tmp_path / "serving" / "student" / "1")
    ).signatures["serving_default"]
    _, specs = signature.structured_input_signature
    rest = next(code for kind, code in blocks if "instances" in code)
    body = json.loads(
        re.search(r"body = (\{.*\})\n", rest)
        .group(1)
        .replace("[0.0] * 64", json.dumps([0.0] * 64))
    )
    for instance in body["instances"]:
        assert sorted(instance) == sorted(specs)
        for name, value in instance.items():
            assert list(np.shape(value)) == specs[name].shape[1:].as_list()
