"""`examples.finetune_hub`: a tiny random-init task through its preset."""

import numpy as np
import pytest

from examples.lib import hub_finetuning

keras_hub = pytest.importorskip("keras_hub")

from tests import hub_tasks  # noqa: E402


def test_read_texts_reads_labels_and_texts(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("1\tthe quick fox\n\n0\tbrown\tjumps\n", encoding="utf-8")

    texts, labels = hub_finetuning.read_texts(str(path), labelled=True)

    assert texts.tolist() == ["the quick fox", "brown\tjumps"]
    assert labels.tolist() == [1, 0]


def test_unknown_task_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `task`. Expected one of "
        r"\('causal_lm', 'text_classifier'\). Received: task='detector'",
    ):
        hub_finetuning.finetune_hub(
            "preset", "train.txt", task="detector", output_preset="out"
        )


@pytest.mark.slow
def test_causal_lm_is_fine_tuned_from_its_preset_and_exported(tmp_path):
    hub_tasks.gpt2_causal_lm().save_to_preset(str(tmp_path / "preset"))
    train_file = tmp_path / "train.txt"
    train_file.write_text("a b\nab a b ab\nb\na ab\n", encoding="utf-8")

    history = hub_finetuning.finetune_hub(
        str(tmp_path / "preset"),
        str(train_file),
        output_preset=str(tmp_path / "tuned"),
        export_dir=str(tmp_path / "export"),
        batch_size=2,
        learning_rate=1e-2,
    )

    assert np.isfinite(history.history["loss"]).all()
    tuned = keras_hub.models.CausalLM.from_preset(str(tmp_path / "tuned"))
    original = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    moved = [
        np.abs(a - b).max()
        for a, b in zip(
            tuned.get_weights(), original.get_weights(), strict=True
        )
    ]
    assert max(moved) > 0
    assert tuned.generate(["a b"], max_length=8)[0].startswith("a b")
    assert (tmp_path / "export" / "saved_model.pb").exists()


def test_retained_file_needs_a_classifier():
    with pytest.raises(
        ValueError,
        match=r"^Invalid value for argument `retained_file`. Expected None "
        r"unless task='text_classifier'. Received: "
        r"retained_file='old.tsv' with task='causal_lm'$",
    ):
        hub_finetuning.finetune_hub(
            "preset",
            "train.txt",
            output_preset="out",
            retained_file="old.tsv",
        )


@pytest.mark.slow
def test_retained_file_puts_forgetting_in_the_logs(tmp_path):
    classifier = hub_tasks.bert_text_classifier()
    classifier.save_to_preset(str(tmp_path / "preset"))
    train_file = tmp_path / "train.tsv"
    train_file.write_text("0\tthe fox\n1\tquick brown\n", encoding="utf-8")
    old_file = tmp_path / "old.tsv"
    old_file.write_text(
        "2\tjumps the fox\n0\tthe\n1\tbrown fox jumps\n", encoding="utf-8"
    )

    history = hub_finetuning.finetune_hub(
        str(tmp_path / "preset"),
        str(train_file),
        task="text_classifier",
        output_preset=str(tmp_path / "tuned"),
        epochs=2,
        batch_size=2,
        learning_rate=1e-2,
        retained_file=str(old_file),
    )

    texts, labels = hub_finetuning.read_texts(str(old_file), labelled=True)
    tuned = keras_hub.models.TextClassifier.from_preset(str(tmp_path / "tuned"))
    classes = tuned.predict(texts, verbose=0).argmax(-1)
    before = classifier.predict(texts, verbose=0).argmax(-1)
    assert len(history.history["retained_accuracy"]) == 2
    assert history.history["retained_accuracy"][-1] == pytest.approx(
        np.mean(classes == labels)
    )
    assert history.history["teacher_agreement"][-1] == pytest.approx(
        np.mean(classes == before)
    )
