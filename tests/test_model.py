"""The network's shape: layers the issue asks for, the stride-2 stem, and the MAC count."""

import pytest

from edgecell.model import ModelSpec, build_model, count_macs
from edgecell.options import DEFAULT_IMG_SIZE

SPECS = [
    ModelSpec(64, 5),  # the default shape
    ModelSpec(64, 5, widths=(16, 32, 64, 128), depths=None, stem_stride=1, stem_kernel=3),  # full-resolution first layer
    ModelSpec(64, 5, stem_stride=4, stem_kernel=4),  # a patch stem
    ModelSpec(48, 4, widths=(8, 16, 24), depths=(2, 1, 3), stem_stride=2, stem_kernel=3),
]


def _keras_macs(model) -> int:
    """Multiply-accumulates from the built Keras layers: conv kernel volume x output pixels, plus Dense."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            macs += kh * kw * cin * cout * h * w
        elif kind == "Dense":
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return macs


@pytest.mark.parametrize("spec", SPECS, ids=["default", "full-resolution", "patch-stem", "other-depths"])
def test_count_macs_matches_built_model(spec):
    pytest.importorskip("tensorflow")
    model = build_model(spec)
    assert count_macs(spec) == _keras_macs(model)
    kinds = [type(layer).__name__ for layer in model.layers]
    convs = kinds.count("Conv2D")
    assert convs == sum(spec.block_depths())
    assert kinds.count("MaxPooling2D") == len(spec.widths)  # every block ends with one
    for needed in ("Rescaling", "Dropout", "Dense", "Softmax", "GlobalAveragePooling2D"):
        assert needed in kinds
    final = spec.input_size // spec.stem_stride // 2 ** len(spec.widths)
    gap_in = [layer for layer in model.layers if type(layer).__name__ == "GlobalAveragePooling2D"][0].input.shape
    assert tuple(gap_in[1:3]) == (final, final)


def test_train_defaults_are_the_model_defaults():
    """TrainOptions builds ModelSpec's default network at the default input size (one set of defaults, not two)."""
    from edgecell.train import TrainOptions

    assert TrainOptions(data_dir="", out_dir="").model_spec(5) == ModelSpec(DEFAULT_IMG_SIZE, 5)


def test_depths_must_match_widths():
    with pytest.raises(ValueError, match="2 depths for 3 widths"):
        ModelSpec(64, 5, widths=(8, 16, 24), depths=(1, 2)).block_depths()
