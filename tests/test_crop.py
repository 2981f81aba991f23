"""Face crops: geometry of box crops, padding at the edges, landmark alignment, standardization."""

import cv2
import numpy as np
import pytest

from edge.crop import ALIGNED_TEMPLATE_160, CropSpec, crop_box, face_crop, similarity_transform, standardize


def gradient_image(height: int = 200, width: int = 300) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.dstack([xs % 256, ys % 256, (xs + ys) % 256]).astype(np.uint8)


def test_box_crop_without_margin_is_the_resized_box():
    image = gradient_image()
    crop = crop_box(image, (100, 50, 80, 80), margin_px=0, size=80)
    assert np.array_equal(crop, image[50:130, 100:180])


def test_margin_is_split_between_both_sides():
    image = gradient_image()
    crop = crop_box(image, (100, 50, 64, 64), margin_px=32, size=96)
    assert np.array_equal(crop, image[34:130, 84:180])


def test_pad_keeps_scale_at_the_border_while_clip_stretches():
    image = gradient_image()
    box = (0, 0, 64, 64)  # touches the top-left corner: half the margin falls outside
    padded = crop_box(image, box, margin_px=32, size=96, border="pad")
    clipped = crop_box(image, box, margin_px=32, size=96, border="clip")
    # Pad: the box's own pixels sit 16 px in, unscaled.
    assert np.array_equal(padded[16:, 16:], image[0:80, 0:80])
    # Repeated edge fills the overhang.
    assert np.array_equal(padded[0, 16:], image[0, 0:80])
    # Clip: the 80x80 visible region is stretched to 96x96.
    assert np.array_equal(clipped, cv2.resize(image[0:80, 0:80], (96, 96), interpolation=cv2.INTER_LINEAR))


def test_box_outside_image_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        crop_box(gradient_image(), (400, 10, 20, 20))


def test_similarity_transform_recovers_rotation_scale_translation():
    angle, scale, shift = np.radians(25), 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.array([[10, 20], [50, 22], [30, 40], [15, 60], [48, 61]], dtype=np.float32)
    target = (scale * source @ rotation.T) + shift
    matrix = similarity_transform(source, target)
    assert np.allclose(matrix[:, :2], scale * rotation, atol=1e-4)
    assert np.allclose(matrix[:, 2], shift, atol=1e-3)


def test_aligned_crop_puts_landmarks_on_the_template():
    # Draw five dots at the template positions, rotated by 30 degrees and shifted, then align.
    image = np.zeros((400, 400, 3), np.uint8)
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (ALIGNED_TEMPLATE_160 - 80) @ rotation.T * 1.5 + np.array([200, 210])
    for x, y in landmarks:
        cv2.circle(image, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    crop = face_crop(image, (0, 0, 1, 1), landmarks, CropSpec(method="aligned"))
    for x, y in ALIGNED_TEMPLATE_160:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_face_crop_errors_name_the_problem():
    image = gradient_image()
    with pytest.raises(ValueError, match="landmarks"):
        face_crop(image, (10, 10, 50, 50), None, CropSpec(method="aligned"))
    with pytest.raises(ValueError, match="unknown crop method"):
        face_crop(image, (10, 10, 50, 50), None, CropSpec(method="round"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown border"):
        crop_box(image, (10, 10, 50, 50), border="wrap")  # type: ignore[arg-type]


def test_standardize_is_the_fixed_facenet_formula():
    values = standardize(np.array([[0, 127.5, 255]], dtype=np.float32).astype(np.uint8))
    assert values.dtype == np.float32
    assert np.allclose(standardize(np.array([0, 255], np.uint8)), [-127.5 / 128, 127.5 / 128])
    assert values.shape == (1, 3)
