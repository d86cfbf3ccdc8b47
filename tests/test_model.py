"""The network's shape: layers the issue asks for, the stride-2 stem, and the MAC count."""

import numpy as np
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
    assert count_macs(spec) == _keras_macs(model) * spec.views  # the network runs once per view
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


def _mirrors(x, views):
    """The views of a batch as the Pi runtime makes them (firmware_host.mirrors; written out in tests/test_runtime.py)."""
    from firmware_host.mirrors import view

    return [np.stack([view(img, k) for img in x]) for k in range(views)]


@pytest.mark.parametrize("views", [2, 4, 8])
def test_views_average_the_network_over_mirrored_images(views, tmp_path):
    """with_views: the output is the mean of the network's outputs on the mirrored images, the features too;
    it saves and loads as it was, and the network inside is the one trained (same weights, one image)."""
    pytest.importorskip("tensorflow")

    from edgecell.model import learnt_outputs, load_model, predict_with_features, views_of, with_features, with_views, without_views
    from edgecell.train import predict

    spec = ModelSpec(24, 3, widths=(4, 8), depths=None, views=views)
    net = build_model(spec, seed=3)
    model = with_views(net, views)
    assert views_of(model) == views and without_views(model) is net and learnt_outputs(model) is net
    assert model.count_params() == net.count_params()  # the views share the network's weights
    x = np.random.default_rng(0).integers(0, 256, size=(5, 24, 24, 3)).astype(np.uint8)
    x[:, :12] //= 3  # not symmetric: the mirrors differ
    each = [predict(net, np.ascontiguousarray(v)) for v in _mirrors(x, views)]
    assert np.abs(each[0] - each[1]).max() > 1e-4  # the test would pass with no mirroring otherwise
    np.testing.assert_allclose(predict(model, x), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    probs, feats = predict_with_features(model, x)
    gap = with_features(net)
    np.testing.assert_allclose(feats, np.mean([np.asarray(gap(v.astype(np.float32))[1]) for v in _mirrors(x, views)], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, predict(model, x), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert views_of(again) == views
    np.testing.assert_allclose(predict(again, x), predict(model, x), rtol=1e-6, atol=1e-7)


def test_one_view_is_the_network_itself():
    pytest.importorskip("tensorflow")
    from edgecell.model import views_of, with_views

    net = build_model(ModelSpec(24, 3, widths=(4,), depths=None, views=1))
    assert with_views(net, 1) is net and views_of(net) == 1
    with pytest.raises(ValueError, match="views must be one of"):
        with_views(net, 3)
