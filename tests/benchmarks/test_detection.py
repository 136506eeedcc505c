import numpy as np
import pytest

from benchmarks.experiments import detection_data
from benchmarks.experiments import detection_experiment
from examples.lib.training_config import TrainingConfig
from tests import helpers


@pytest.mark.parametrize(
    "box_a, box_b, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (0, 10, 10, 20), 0.0),  # touching edges
        ((0, 0, 10, 10), (0, 5, 10, 15), 50 / 150),
        ((0, 0, 10, 10), (2, 2, 8, 8), 36 / 100),  # one inside the other
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_iou(box_a, box_b, expected):
    assert detection_experiment.iou(box_a, box_b) == pytest.approx(expected)
    assert detection_experiment.iou(box_b, box_a) == pytest.approx(expected)


def _case():
    """Two images, two classes with ground truth, and a third without."""
    truths = [
        (
            np.array([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]]),
            np.array([1, 1, 2]),
        ),
        (np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([1, 1])),
    ]
    detections = [
        (
            np.array(
                [
                    [0, 0, 10, 10],  # class 1, IoU 1 with the first box
                    [1, 1, 11, 11],  # class 1, a duplicate of it
                    [20, 25, 30, 35],  # class 2, IoU 1/3
                    [20, 22, 30, 32],  # class 2, IoU 80/120
                    [40, 40, 50, 50],  # class 3, no such ground truth
                ]
            ),
            np.array([1, 1, 2, 2, 3]),
            np.array([0.9, 0.5, 0.95, 0.4, 0.99]),
        ),
        (
            np.array(
                [
                    [50, 50, 60, 60],  # class 1, on nothing
                    [0, 0, 10, 8],  # class 1, IoU 0.8
                    [21, 21, 31, 31],  # class 1, IoU 81/119
                ]
            ),
            np.array([1, 1, 1]),
            np.array([0.8, 0.7, 0.6]),
        ),
    ]
    return detections, truths


def test_mean_average_precision_on_a_case_computed_by_hand():
    detections, truths = _case()
    # Class 1, four boxes (the one at (40, 40) is never found). By score:
    # 0.9 hit, 0.8 miss, 0.7 hit, 0.6 hit, 0.5 miss (a duplicate: its box
    # is matched already). Precision at the hits: 1, 2/3, 3/4; interpolated
    # (best at that rank or below): 1, 3/4, 3/4. AP = (1 + 3/4 + 3/4) / 4.
    # Class 2, one box: 0.95 miss (IoU 1/3), 0.4 hit at precision 1/2.
    # AP = 1/2. Class 3 has no ground truth and does not count.
    expected = (0.625 + 0.5) / 2
    assert detection_experiment.mean_average_precision(
        detections, truths
    ) == pytest.approx(expected)
    # At IoU 0.7 the hits at 0.6 (IoU 0.68) and 0.4 (IoU 0.67) miss:
    # class 1 AP = (1 + 2/3) / 4, class 2 AP = 0.
    assert detection_experiment.mean_average_precision(
        detections, truths, iou_threshold=0.7
    ) == pytest.approx((5 / 3) / 4 / 2)


def test_mean_average_precision_is_one_for_perfect_detections():
    _, truths = _case()
    detections = [
        (boxes, labels, np.ones(len(labels))) for boxes, labels in truths
    ]
    assert detection_experiment.mean_average_precision(
        detections, truths
    ) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "detections, truths, kwargs, message",
    [
        ([], [(np.zeros((0, 4)), np.zeros(0))], {}, "one entry per image"),
        ([(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], [], {}, "one entry"),
        (
            [],
            [],
            {"iou_threshold": 0.0},
            r"Expected a float in \(0, 1\]. Received: iou_threshold=0.0",
        ),
        (
            [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))],
            [(np.zeros((0, 4)), np.zeros(0))],
            {},
            "Invalid value for argument `truths`. Expected at least one",
        ),
    ],
)
def test_mean_average_precision_refuses_bad_arguments(
    detections, truths, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        detection_experiment.mean_average_precision(
            detections, truths, **kwargs
        )


def test_digit_scene_boxes_enclose_the_pasted_digits():
    glyphs, labels = detection_data.bundled_digits()
    images, boxes, classes = detection_data.digit_scenes(
        glyphs, labels, count=50, image_size=24, noise=0.0, seed=3
    )
    assert images.shape == (50, 24, 24, 1) and images.dtype == np.float32
    assert boxes.shape == (50, 3, 4) and classes.shape == (50, 3)
    digits = (classes >= 0).sum(axis=1)
    assert digits.min() == 1 and digits.max() == 3
    for image, scene_boxes, scene_classes in zip(
        images[..., 0], boxes, classes, strict=True
    ):
        inside = np.zeros(image.shape, bool)
        for box in scene_boxes[scene_classes >= 0].astype(int):
            top, left, bottom, right = box
            window = image[top:bottom, left:right]
            # Tight: ink on every edge of the box.
            assert window[0].max() > 0 and window[-1].max() > 0
            assert window[:, 0].max() > 0 and window[:, -1].max() > 0
            assert not inside[top:bottom, left:right].any()  # no overlap
            inside[top:bottom, left:right] = True
        assert not image[~inside].any()  # no ink outside the boxes
        assert set(scene_classes[scene_classes < 0]) <= {-1}
    assert not boxes[classes < 0].any()


def test_digit_scenes_are_seeded():
    glyphs, labels = detection_data.bundled_digits()
    a = detection_data.digit_scenes(glyphs, labels, count=5, seed=1)
    b = detection_data.digit_scenes(glyphs, labels, count=5, seed=1)
    c = detection_data.digit_scenes(glyphs, labels, count=5, seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"glyphs": np.zeros((3, 4, 4))},
            r"Invalid value for argument `glyphs`. Expected an array of "
            r"shape \(n, 8, 8\). Received: glyphs.shape=\(3, 4, 4\)",
        ),
        ({"labels": np.zeros(2)}, r"Received: labels.shape=\(2,\)"),
        ({"count": 0}, "Expected an int > 0. Received: count=0"),
        ({"image_size": 8}, "Expected an int >= 16. Received: image_size=8"),
        ({"max_digits": 0}, "an int >= 1. Received: max_digits=0"),
        ({"noise": -1.0}, "Expected a float >= 0. Received: noise=-1.0"),
    ],
)
def test_digit_scenes_refuse_bad_arguments(kwargs, message):
    arguments = {"glyphs": np.zeros((3, 8, 8)), "labels": np.zeros(3)}
    arguments["count"] = 1
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        detection_data.digit_scenes(
            arguments.pop("glyphs"), arguments.pop("labels"), **arguments
        )


def test_targets_decode_to_the_boxes_they_encode():
    glyphs, labels = detection_data.bundled_digits()
    _, boxes, classes = detection_data.digit_scenes(
        glyphs, labels, count=20, seed=0
    )
    targets = detection_experiment.encode_targets(boxes, classes, 4)
    assert targets["classes"].shape == (20, 4, 4)
    assert targets["boxes"].shape == (20, 4, 4, 5)
    np.testing.assert_array_equal(
        targets["boxes"][..., 4], targets["classes"] > 0
    )
    # Logits sure of the target class: a perfect detector, whose empty
    # cells propose empty boxes with scores near 0, after every hit.
    logits = 20.0 * np.eye(11)[targets["classes"]]
    detections = detection_experiment.decode(logits, targets["boxes"][..., :4])
    truths = [
        (b[c >= 0], c[c >= 0]) for b, c in zip(boxes, classes, strict=True)
    ]
    assert detection_experiment.mean_average_precision(
        detections, truths
    ) == pytest.approx(1.0)


def test_detector_outputs_both_heads():
    model = detection_experiment.build_detector((24, 16, 1))
    outputs = model(np.zeros((2, 24, 16, 1), "float32"))
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "classes": (2, 3, 2, 11),
        "boxes": (2, 3, 2, 4),
    }


@pytest.mark.slow
def test_experiment_runs():
    tasks = detection_experiment.digit_tasks(
        train_count=16, test_count=8, image_size=16
    )
    rows = detection_experiment.run_experiment(
        tasks,
        lambdas=(0.5,),
        anchor_lambdas=(0.2,),
        alphas=(0.01,),
        anchor_count=8,
        pretrain_epochs=1,
        config=TrainingConfig(epochs=1, batch_size=8),
    )
    assert [row["method"] for row in rows] == [
        "pretrained",
        "plain fine-tuning",
        "SFT (lambda=0.5)",
        "SFT + 8 anchors (lambda=0.2)",
        "L2-SP (alpha=0.01)",
    ]
    for row in rows:
        assert 0.0 <= row["old_map"] <= 1.0
        assert 0.0 <= row["new_map"] <= 1.0
    table = detection_experiment.format_table(rows)
    assert len(table.splitlines()) == 2 + len(rows)


def _binary(*args):
    return helpers.run_binary("examples.detection", *args)


@pytest.mark.slow
def test_binary_refuses_stray_arguments():
    stray = _binary("extra")
    assert stray.returncode != 0
    assert "Unexpected arguments: ['extra']" in stray.stderr


@pytest.mark.slow
def test_binary_prints_the_table():
    run = _binary(
        "--pretrain_epochs=1",
        "--epochs=1",
        "--lambdas=0.1",
        "--anchor_lambdas=0.3",
        "--l2_sp_alphas=0.01",
        "--scenes=16",
        "--anchor_count=8",
        "--image_size=16",
    )
    assert run.returncode == 0, run.stderr
    assert "| SFT + 8 anchors (lambda=0.3) |" in run.stdout
    assert "| L2-SP (alpha=0.01) |" in run.stdout
    assert "[5/5] L2-SP (alpha=0.01) ..." in run.stderr
