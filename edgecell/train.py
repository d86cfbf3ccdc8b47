"""Training: data -> split -> CNN -> metrics, plots and a run folder, written atomically.

A run folder holds:

- ``model.keras``: the trained Keras model (best weights by validation loss);
- ``metadata.json``: classes in order, input size, preprocessing, seed, data set fingerprint,
  temperature, options and edgecell version;
- ``split.csv``: the split manifest (file, class, split, sha256);
- ``history.json`` and ``training_curves.png``;
- ``metrics.json`` (test split), ``confusion_matrix.png``;
- ``cv.json`` with ``--cv K``.

The folder is built in a hidden temporary sibling and swapped in at the end
(:func:`firmware_host.atomic.staged_dir`), so an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecell import __version__
from edgecell import data as data_mod
from edgecell.console import progress, shown, stderr_console, warn
from edgecell.model import ModelSpec  # no TensorFlow at import time
from edgecell.options import DEFAULT_IMG_SIZE, DEFAULT_SEED
from edgecell.runfolder import CV_FILE, HISTORY_FILE, KERAS_FILE, METRICS_FILE, PLOT_FILES, RUN_FORMAT, RUN_MARKER, RUN_OWNED, SPLIT_FILE, RunFolder, replacing
from firmware_host import preprocess
from firmware_host.atomic import check_stageable, raise_if_interrupted, staged_dir, write_json
from firmware_host.errors import DataError, EdgecellError
from firmware_host.metadata import sha256_file
from firmware_host.paths import OTHER_CLASS


@dataclass
class TrainOptions:
    """What ``edgecell train`` was asked to do.

    Attributes:
        data_dir: data folder(s): class folders, or source folders of class folders (see
            :func:`edgecell.data.discover_sources`); one path or several.
        exclude: sources (``SOURCE``) or class folders of a source (``SOURCE/TYPE``) left out of
            training, to test on a lab the model has never seen.
        out_dir: run folder to write (replaced atomically if it is an earlier run).
        epochs: maximum epochs (early stopping on validation loss usually ends sooner).
        img_size: square model input in pixels; every image is resized to it.
        seed: seeds the split, weight initialisation, augmentation and shuffling.
        batch_size: images per gradient step.
        patience: epochs without validation-loss improvement before stopping.
        learning_rate: initial Adam learning rate (cosine decay to 1% of it).
        widths, depths, stem_stride, stem_kernel, views: the network's shape and the views it averages (see
            :class:`edgecell.model.ModelSpec`; the defaults are its defaults).
        dropout: dropout before the Dense layer.
        augment: flips, 90-degree rotations, zoom/translation and stain/colour jitter.
        cv: K for stratified, duplicate-grouped K-fold cross-validation on train+val (0 = off).
        cv_epochs: maximum epochs per fold (default: ``epochs``).
    """

    data_dir: str | Sequence[str]
    out_dir: str
    exclude: tuple[str, ...] = ()
    epochs: int = 80  # 50 underfit (docs/design.md, "Longer training")
    img_size: int = DEFAULT_IMG_SIZE
    seed: int = DEFAULT_SEED
    batch_size: int = 32
    patience: int = 15
    learning_rate: float = 2e-3
    widths: tuple[int, ...] = ModelSpec.widths
    depths: tuple[int, ...] | None = ModelSpec.depths
    stem_stride: int = ModelSpec.stem_stride
    stem_kernel: int = ModelSpec.stem_kernel
    views: int = ModelSpec.views
    dropout: float = 0.3
    augment: bool = True
    cv: int = 0
    cv_epochs: int | None = None

    def model_spec(self, n_classes: int):
        """The :class:`edgecell.model.ModelSpec` these options describe."""
        depths = tuple(self.depths) if self.depths is not None else None
        return ModelSpec(self.img_size, n_classes, tuple(self.widths), self.dropout, depths, self.stem_stride, self.stem_kernel, self.views)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run folder.
        test_metrics: metrics on the test split (see :func:`edgecell.metrics.compute`).
        epochs_run: epochs actually trained; best_epoch: the epoch whose weights were kept.
        seconds: wall-clock training time (fit only); images_per_second: training throughput.
        temperature: fitted on the validation split.
        cv: cross-validation summary, or None.
    """

    run_dir: Path
    test_metrics: dict
    epochs_run: int
    best_epoch: int
    seconds: float
    images_per_second: float
    temperature: float
    skipped: int
    cv: dict | None = None
    counts: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- TF pieces


AUG_ZOOM = (0.85, 1.0)
"""Zoom and translation: a random square of this share of the side, at a random place, back to full size."""
AUG_RESOLUTION = (0.25, 1.0)
"""Down-then-up scaling: the image's resolution shrinks to this share of the input at random."""
AUG_SHARPNESS = (-1.0, 1.0)
"""Unsharp-mask amount: below 0 blurs (-1: a Gaussian blur), above 0 sharpens."""
AUG_NOISE = 0.04
"""Largest standard deviation of Gaussian pixel noise (pixels scaled to 0-1)."""
AUG_JPEG_QUALITY = (30, 95)
"""JPEG re-encoding quality range."""
AUG_HUE = 0.1
"""Largest hue rotation, as a share of the colour wheel (the preprocessing has normalised the stain)."""
AUG_SATURATION = (0.5, 1.6)
"""Saturation factor range."""
AUG_GREY = 0.25
"""Probability of a grey image."""
AUG_PROB = 0.5
"""Probability of each acquisition augmentation (resolution, sharpness, noise, JPEG)."""


def _augment_fn(tf, size: int):
    """Augmentation for microscope cells: geometry, acquisition and stain/colour, per image.

    Acquisition augmentations destroy what tells one lab's camera from another's (a lab is in its
    optics' sharpness, its sensor's noise and its JPEG settings as much as in its colours), so
    the model has to read the cell: resolution (down, then up again), blur or sharpening, noise and
    JPEG re-encoding at a random quality, each applied with probability :data:`AUG_PROB`.

    Every random draw is *stateless*, keyed by a per-image seed pair (see :func:`_dataset`), so the
    same ``--seed`` gives the same augmented images, in any thread order, and so the same model.
    (Stateful random ops in a parallel ``map`` draw in whatever order the threads run: two runs of
    the same seed differed by 1 point of test accuracy.)
    """
    offsets = tf.range(-2, 3, dtype=tf.float32)

    def blur(x, sigma):
        g = tf.exp(-(offsets**2) / (2.0 * sigma * sigma))
        g = g / tf.reduce_sum(g)
        k = tf.tile(tf.reshape(tf.tensordot(g, g, axes=0), [5, 5, 1, 1]), [1, 1, 3, 1])
        padded = tf.pad(x[None], [[0, 0], [2, 2], [2, 2], [0, 0]], mode="REFLECT")
        return tf.nn.depthwise_conv2d(padded, k, [1, 1, 1, 1], "VALID")[0]

    def augment(x, y, seed):
        s = tf.random.experimental.stateless_split(seed, num=20)

        def draw(i, lo=0.0, hi=1.0):
            return tf.random.stateless_uniform([], s[i], lo, hi)

        x = tf.cast(x, tf.float32) / 255.0
        # Geometry: any of the 8 square symmetries (cells have no up or left).
        x = tf.image.rot90(x, tf.random.stateless_uniform([], s[0], 0, 4, dtype=tf.int32))
        x = tf.image.stateless_random_flip_left_right(x, s[1])
        # Zoom and translation: a random square of AUG_ZOOM of the side, back to size.
        crop = tf.cast(tf.round(draw(2, *AUG_ZOOM) * size), tf.int32)
        x = tf.image.stateless_random_crop(x, tf.stack([crop, crop, 3]), s[3])
        x = tf.image.resize(x, [size, size], method="bilinear")
        # Acquisition: resolution, sharpness, (later) noise and JPEG.
        low = tf.maximum(8, tf.cast(tf.round(draw(10, *AUG_RESOLUTION) * size), tf.int32))
        x = tf.cond(draw(11) < AUG_PROB, lambda: tf.image.resize(tf.image.resize(x, [low, low], antialias=True), [size, size]), lambda: x)
        amount, sigma = draw(12, *AUG_SHARPNESS), draw(13, 0.5, 2.0)
        x = tf.cond(draw(14) < AUG_PROB, lambda: x + amount * (x - blur(x, sigma)), lambda: x)
        # Stain and colour: hue, saturation, brightness, contrast, per-channel white balance, and
        # sometimes grey, so background tint and stain carry little information.
        x = tf.image.stateless_random_hue(tf.clip_by_value(x, 0.0, 1.0), AUG_HUE, s[4])
        x = tf.image.stateless_random_saturation(x, *AUG_SATURATION, s[5])
        x = tf.image.stateless_random_brightness(x, 0.12, s[6])
        x = tf.image.stateless_random_contrast(x, 0.6, 1.4, s[7])
        x = x * tf.random.stateless_uniform([1, 1, 3], s[8], 0.85, 1.15)  # covers the gains that swap one lab's background tint for the other's
        grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        x = tf.where(draw(9) < AUG_GREY, grey, x)
        noise = tf.random.stateless_normal(tf.shape(x), s[15]) * draw(16, 0.0, AUG_NOISE)
        x = tf.cond(draw(17) < AUG_PROB, lambda: x + noise, lambda: x)
        x = tf.clip_by_value(x, 0.0, 1.0)
        x = tf.cond(draw(18) < AUG_PROB, lambda: tf.image.stateless_random_jpeg_quality(x, *AUG_JPEG_QUALITY, s[19]), lambda: x)
        x = tf.reshape(x, [size, size, 3]) * 255.0
        return x, y

    return augment


def _dataset(tf, x: np.ndarray, y: np.ndarray, n_classes: int, batch: int, seed: int, train: bool, augment: bool, size: int, targets: np.ndarray | None = None):
    onehot = np.eye(n_classes, dtype=np.float32)[y] if targets is None else targets.astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, onehot))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)  # a new order each epoch, the same for a seed
        if augment:
            # one seed pair per image and epoch, drawn from a seeded stream that restarts differently (but
            # reproducibly) at each epoch; the map's threads then draw nothing from shared state
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            aug = _augment_fn(tf, size)
            ds = tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: aug(xy[0], xy[1], s), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
    else:
        ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, n_classes: int, groups: np.ndarray | None = None) -> dict[int, float]:
    """Balanced class weights (n / (k * count)); all 1.0 when classes are balanced.

    ``groups`` (one entry per output: the class it is added into, :func:`edgecell.model.merge_matrix`) balances
    the classes, not the outputs: the outputs of one class share its weight equally, so learning ``other`` as
    four types gives ``other`` the weight of one class, not of four.
    """
    counts = np.bincount(y, minlength=n_classes).astype(float)
    if groups is None:
        groups = np.arange(n_classes)
    per_group = np.bincount(groups)  # outputs per class
    w = len(y) / (len(per_group) * per_group[groups] * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(n_classes)}


def _progress_callback(tf, con: Console, epochs: int, steps: int, label: str):
    keras = tf.keras

    class RichProgress(keras.callbacks.Callback):
        """A bar per epoch on a terminal; in a log (not a terminal), one plain line per epoch instead (rich renders a
        log's bars once, at the end, cut to 80 columns: "━━ 1… 0… 0:…")."""

        def on_train_begin(self, logs=None):
            self.bar = progress(con) if con.is_terminal else None
            if self.bar is not None:
                self.bar.start()
            self.task = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1
            if self.bar is not None:
                self.task = self.bar.add_task(f"{label}epoch {self.epoch}/{epochs}", total=steps)

        def on_train_batch_end(self, batch, logs=None):
            raise_if_interrupted()  # a Ctrl-C that Python swallowed (it landed in a finalizer) still stops training
            if self.bar is None:
                return
            logs = logs or {}
            self.bar.update(
                self.task,
                completed=batch + 1,
                description=f"{label}epoch {self.epoch}/{epochs} loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}",
            )

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            text = (
                f"{label}epoch {epoch + 1}/{epochs} loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}"
                f" | val loss {logs.get('val_loss', 0):.3f} acc {logs.get('val_accuracy', 0):.3f}"
            )
            if self.bar is None:
                con.print(text, soft_wrap=True, highlight=False)
            else:
                self.bar.update(self.task, completed=steps, description=text)

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.stop()

    return RichProgress()


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    opts: TrainOptions,
    epochs: int,
    con: Console,
    label: str = "",
    model=None,
    early_stopping: bool = True,
    targets: np.ndarray | None = None,
    learn_as: tuple[list[str], list[str]] | None = None,
):
    """Fit a fresh model, or go on training ``model`` (fine-tuning); returns (model, history dict, seconds).

    ``learn_as`` = (targets, classes): the labels are indices into ``targets`` (:meth:`edgecell.data.Dataset.targets`),
    and the model returned adds them up into ``classes`` (:func:`edgecell.model.with_classes`). The model returned
    averages ``opts.views`` mirrored views of each image (:func:`edgecell.model.with_views`); ``model`` is trained
    on one image at a time.
    With ``early_stopping`` training stops after ``opts.patience`` epochs without a lower validation
    loss and keeps the best epoch's weights; without it, it runs every epoch and keeps the last.
    ``targets`` (N, classes) replaces the one-hot labels of ``y_train`` as what the model learns
    (soft targets; class weights still follow ``y_train``).
    """
    from edgecell.model import build_model, merge_matrix, with_classes, with_views
    from edgecell.tfutil import import_tf

    tf = import_tf()
    keras = tf.keras
    keras.utils.set_random_seed(opts.seed)
    if model is None:
        model = build_model(opts.model_spec(n_classes), seed=opts.seed)
    train_ds = _dataset(tf, x_train, y_train, n_classes, opts.batch_size, opts.seed, True, opts.augment, opts.img_size, targets)
    val_ds = _dataset(tf, x_val, y_val, n_classes, 128, opts.seed, False, False, opts.img_size)
    steps = int(np.ceil(len(x_train) / opts.batch_size))
    # Cosine decay over the full epoch budget: large steps early, fine ones late.
    schedule = keras.optimizers.schedules.CosineDecay(opts.learning_rate, decay_steps=steps * epochs, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    callbacks = [_progress_callback(tf, con, epochs, steps, label)]
    if early_stopping:
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor="val_loss", patience=opts.patience, restore_best_weights=True))
    t0 = time.perf_counter()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        class_weight=class_weights(y_train, n_classes, merge_matrix(*learn_as).argmax(axis=1) if learn_as else None),
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=0,
    )
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items() if k != "learning_rate"}
    if "learning_rate" in hist.history:
        history["learning_rate"] = [float(v) for v in hist.history["learning_rate"]]
    val_losses = history.get("val_loss", [])
    history["best_epoch"] = int(np.argmin(val_losses)) + 1 if val_losses and early_stopping else len(history.get("loss", []))
    history["epochs_run"] = len(history.get("loss", []))
    model = with_classes(model, *learn_as) if learn_as else model
    return with_views(model, opts.views), history, seconds


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax probabilities for uint8 images, in batches."""
    out = []
    for i in range(0, len(x), batch):
        out.append(np.asarray(model(x[i : i + batch].astype(np.float32), training=False)))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


# --------------------------------------------------------------------------- cross-validation


CV_DECISION = "the argmax alone, without the never-seen score and nucleus check of the test figures"
"""What the folds' figures read (``cv.json``'s ``decision``): no never-seen score is fitted per fold."""
CV_MIN_TRAIN_PER_CLASS = 3
"""Training images per class in a cross-validation fold below which its figures are warned about."""


def cross_validate(ds: data_mod.Dataset, splits: Sequence[str], opts: TrainOptions, con: Console) -> dict:
    """Stratified K-fold on train+val with duplicates grouped; test split untouched. Each fold's figures are those of
    the argmax (no never-seen score is fitted per fold): the spread of the network between folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    from edgecell.metrics import compute

    idx = np.array([i for i, s in enumerate(splits) if s != "test"])
    y_all = ds.labels()
    target_names, t_all = ds.targets()
    groups = np.array([ds.samples[i].sha256 for i in idx])
    k = opts.cv
    if np.bincount(y_all[idx]).min() < k:
        raise DataError(f"--cv {k} needs at least {k} images per class in train+val", ds.root)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=opts.seed)
    folds = []
    for f, (tr, te) in enumerate(skf.split(idx, y_all[idx], groups)):
        tr_idx, te_idx = idx[tr], idx[te]
        # carve a validation share out of the training folds for early stopping (grouped, stratified)
        sub = ds.subset(tr_idx)
        sub_split = data_mod.make_split(sub, opts.seed + f + 1, (0.85, 0.075, 0.075))
        inner_tr = tr_idx[[s == "train" for s in sub_split]]
        inner_val = tr_idx[[s != "train" for s in sub_split]]
        per_class = np.bincount(y_all[inner_tr], minlength=len(ds.classes))
        if per_class.min() < CV_MIN_TRAIN_PER_CLASS:  # a fold's figures then say more about chance than about the model
            c = int(per_class.argmin())
            warn(
                f"fold {f + 1}/{k} trains on {len(inner_tr)} images ({ds.classes[c]}: {per_class[c]}; the rest of each class checks it): "
                f"too few for its figures to mean much; label more images or use a smaller --cv",
                con,
            )
        model, hist, _secs = fit(
            ds.images[inner_tr],
            t_all[inner_tr],
            ds.images[inner_val],
            t_all[inner_val],
            len(target_names),
            opts,
            opts.cv_epochs or opts.epochs,
            con,
            label=f"fold {f + 1}/{k} ",
            learn_as=(target_names, ds.classes),
        )
        m = compute(y_all[te_idx], predict(model, ds.images[te_idx]), ds.classes)
        folds.append(
            {
                "fold": f + 1,
                "n_train": len(inner_tr),
                "n_val": len(inner_val),
                "n_test": len(te_idx),
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "epochs_run": hist["epochs_run"],
                "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            }
        )
        del model
    acc = np.array([f["accuracy"] for f in folds])
    f1 = np.array([f["macro_f1"] for f in folds])
    per_class = {
        c: {
            "mean_f1": float(np.mean([f["per_class_f1"][c] for f in folds])),
            "std_f1": float(np.std([f["per_class_f1"][c] for f in folds], ddof=1) if k > 1 else 0.0),
        }
        for c in ds.classes
    }
    return {
        "k": k,
        "seed": opts.seed,
        "decision": CV_DECISION,
        "folds": folds,
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if k > 1 else 0.0,
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=1)) if k > 1 else 0.0,
        "per_class": per_class,
    }


def cv_table(cv: dict) -> Table:
    t = Table(title=f"{cv['k']}-fold cross-validation (train+val, duplicates grouped; {CV_DECISION})")
    t.add_column("fold", justify="right")
    t.add_column("train/val/test", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("macro-F1", justify="right")
    for f in cv["folds"]:
        t.add_row(str(f["fold"]), f"{f['n_train']}/{f['n_val']}/{f['n_test']}", f"{f['accuracy']:.4f}", f"{f['macro_f1']:.4f}")
    t.add_section()
    t.add_row("[bold]mean ± sd[/bold]", "", f"{cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}", f"{cv['macro_f1_mean']:.4f} ± {cv['macro_f1_std']:.4f}")
    return t


# --------------------------------------------------------------------------- after fitting (train and adapt)


def calibrate(
    model,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str] | None = None,
    x_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    offsets_train: np.ndarray | None = None,
    sources_val: Sequence[str] | None = None,
    groups_train: np.ndarray | None = None,
) -> dict:
    """What is fitted on the validation split after the weights: the metadata keys ``temperature``,
    ``lab_check`` and ``other_score`` (see :func:`edgecell.metrics.fit_temperature`, :func:`~edgecell.metrics.fit_lab_check`,
    :func:`~edgecell.metrics.fit_other_threshold`; the never-seen score also needs the training images and
    ``classes``, and is empty - argmax only - without them; the nucleus check needs the training images'
    nucleus offsets; the lab check reads the never-seen score of the validation cells when there is one, and
    their sources, ``sources_val``, when given; ``groups_train``: the never-seen score's means per group of the
    training images rather than per class, :func:`~edgecell.metrics.fit_other_threshold`)."""
    from edgecell.metrics import apply_temperature, fit_lab_check, fit_other_threshold, fit_temperature
    from edgecell.model import predict_with_features
    from firmware_host.otherscore import OtherScore

    fitted = classes is not None and x_train is not None and y_train is not None
    # one pass over the validation split serves the temperature, the never-seen score and the lab check
    val_probs, val_feats = predict_with_features(model, x_val)
    temperature = fit_temperature(y_val, val_probs)
    other_score = (
        fit_other_threshold(
            model, x_train, y_train, x_val, y_val, classes, offsets_train=offsets_train, val_outputs=(val_probs, val_feats), groups_train=groups_train
        )
        if fitted
        else {}
    )
    score = OtherScore.from_dict(other_score)
    val_scores = score.scores(val_feats) if score is not None and len(x_val) else None
    return {
        "temperature": temperature,
        "lab_check": fit_lab_check(apply_temperature(val_probs, temperature), val_scores, sources_val),
        "other_score": other_score,
    }


def write_results(
    folder: Path,
    model,
    history: dict,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    temperature: float,
    other_score: dict | None = None,
    offsets_test: np.ndarray | None = None,
) -> dict:
    """Write a run folder's model and figures (``model.keras``, ``metrics.json`` on the test split,
    ``history.json``, ``confusion_matrix.png``, ``training_curves.png``); returns the test metrics: those of the labels
    ``classify`` would give, the never-seen score (``other_score``, :func:`calibrate`'s) and the nucleus check
    (``offsets_test``) included, with the argmax alone beside them (:func:`edgecell.metrics.decided_metrics`)."""
    from edgecell.metrics import apply_temperature, decided_metrics, expected_calibration_error
    from edgecell.model import predict_with_features
    from edgecell.plots import confusion_matrix_png, training_curves_png
    from firmware_host.atomic import atomic_path
    from firmware_host.otherscore import OtherScore, decide

    score = OtherScore.from_dict(other_score or {})
    if score is not None:
        test_probs, feats = predict_with_features(model, x_test)
        scores = score.scores(feats) if len(x_test) else None
    else:
        test_probs, scores = predict(model, x_test), None
    decided = decide(
        test_probs,
        scores,
        score.threshold if score else None,
        classes,
        nucleus_offsets=offsets_test,
        nucleus_max=score.nucleus_max if score else None,
    )
    metrics = decided_metrics(y_test, test_probs, classes, decided)
    metrics["split"] = "test"
    metrics["ece"] = expected_calibration_error(y_test, test_probs)
    metrics["ece_calibrated"] = expected_calibration_error(y_test, apply_temperature(test_probs, temperature))
    write_json(folder / METRICS_FILE, metrics)
    write_json(folder / HISTORY_FILE, history)
    confusion_matrix_png(folder / PLOT_FILES[0], metrics["confusion_matrix"], list(classes), f"Test split (n={metrics['n']})")
    training_curves_png(folder / PLOT_FILES[1], history)
    with atomic_path(folder / KERAS_FILE) as mtmp:
        model.save(mtmp)
    return metrics


# --------------------------------------------------------------------------- the whole run


def load_dataset(
    data_dir: str | Sequence[str],
    size: int,
    con: Console,
    classes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    min_per_class: int = data_mod.MIN_PER_CLASS,
    keep_short: bool = False,
) -> data_mod.Dataset:
    """Scan and preprocess data folder(s) with a progress bar; report skipped files and left-out folders.

    ``keep_short``: too few images of a class is not raised but kept as ``Dataset.shortage`` (:func:`edgecell.data.scan`)."""
    try:
        with progress(con, transient=True) as bar:
            task = bar.add_task("reading images", total=None)
            ds = data_mod.scan(
                data_dir,
                size=size,
                classes=classes,
                exclude=exclude,
                min_per_class=min_per_class,
                keep_short=keep_short,
                on_progress=lambda d, n: bar.update(task, completed=d, total=n),
            )
    except DataError as exc:  # name the unusable files before the one-line refusal
        for s in getattr(exc, "skipped", []):
            warn(f"skipped {s.path}: {s.reason}")
        raise
    report_skipped(ds, con)
    return ds


def report_skipped(ds: data_mod.Dataset, con: Console | None = None) -> None:
    """What reading the data left out: each unusable file (a warning), then the notes on folders (a source without
    class folders, images beside them, an empty class folder), for train, evaluate and adapt alike."""
    for s in ds.skipped:
        warn(f"skipped {s.path}: {s.reason}")
    if ds.skipped:
        warn(f"{len(ds.skipped)} file(s) skipped, {len(ds.samples)} used")
    for note in ds.notes:
        (con or stderr_console).print(f"[dim]note: {shown(note)}[/dim]", soft_wrap=True, highlight=False)  # a folder may be "lab[red]"


def run(opts: TrainOptions, con: Console | None = None) -> TrainResult:
    """Train, evaluate on the test split and write the run folder."""
    from edgecell.model import count_macs
    from edgecell.tfutil import import_tf

    con = con or stderr_console
    if opts.epochs < 1:
        raise EdgecellError("--epochs must be at least 1")
    if opts.depths is not None and len(opts.depths) != len(opts.widths):
        raise EdgecellError(f"{len(opts.depths)} depths for {len(opts.widths)} widths; give one depth per width")
    spec = opts.model_spec(2)
    if spec.blocks_that_fit() < len(opts.widths):  # found before the images are read, not as Keras's error after
        raise EdgecellError(
            f"--widths gives {len(opts.widths)} blocks, but a {opts.img_size} px input is pooled below one pixel after "
            f"{spec.blocks_that_fit()} of them; give at most {spec.blocks_that_fit()} widths, or a larger --img-size"
        )
    check_stageable(opts.out_dir, marker=RUN_MARKER, owned=RUN_OWNED)  # before minutes of work, not after
    tf = import_tf()  # fail early, before reading thousands of images
    ds = load_dataset(opts.data_dir, opts.img_size, con, exclude=opts.exclude)
    splits = data_mod.make_split(ds, opts.seed)
    sp = np.array(splits)
    y = ds.labels()
    tr, va, te = (np.where(sp == s)[0] for s in data_mod.SPLITS)
    con.print(
        f"[bold]{len(ds.samples)}[/bold] images, {len(ds.classes)} classes, "
        f"{len(ds.duplicate_groups())} duplicate group(s) kept within one split; "
        f"split train/val/test = {len(tr)}/{len(va)}/{len(te)} (seed {opts.seed})"
    )
    replaced = replacing(opts.out_dir)
    with staged_dir(opts.out_dir, marker=RUN_MARKER, owned=RUN_OWNED) as tmp:
        data_mod.write_manifest(tmp / SPLIT_FILE, ds, splits)
        cv = None
        if opts.cv:
            cv = cross_validate(ds, splits, opts, con)
            write_json(tmp / CV_FILE, cv)
            con.print(cv_table(cv))
        target_names, t = ds.targets()
        model, history, seconds = fit(
            ds.images[tr], t[tr], ds.images[va], t[va], len(target_names), opts, opts.epochs, con, learn_as=(target_names, ds.classes)
        )
        sources = np.array([sample.source for sample in ds.samples])
        cal = calibrate(model, ds.images[va], y[va], ds.classes, ds.images[tr], y[tr], ds.nucleus_offsets[tr], sources[va])
        temperature = cal["temperature"]
        if OTHER_CLASS in ds.classes and not cal["other_score"]:  # said, not a quietly smaller model
            warn(
                "the validation split holds no cell of the five types, so the never-seen score and the nucleus check are not "
                "fitted: the model labels cells by their most probable class alone (label more cells of the five)",
                con,
            )
        metrics = write_results(tmp, model, history, ds.images[te], y[te], ds.classes, temperature, cal["other_score"], ds.nucleus_offsets[te])
        spec = opts.model_spec(len(target_names))
        meta = {
            "format": RUN_FORMAT,
            "classes": list(ds.classes),
            "input_size": opts.img_size,
            "preprocessing": preprocess.describe(),
            "seed": opts.seed,
            "dataset": {
                "path": str(ds.root.resolve()),
                "sources": {name: str(Path(folder).resolve()) for name, folder in ds.sources.items()},
                "exclude": list(opts.exclude),
                "fingerprint": ds.fingerprint(),
                "counts": ds.counts(),
                "counts_by_source": ds.counts_by_source(),
                "skipped": len(ds.skipped),
            },
            "split": {"train": len(tr), "val": len(va), "test": len(te), "fractions": list(data_mod.DEFAULT_FRACTIONS)},
            **cal,
            "model": {
                "widths": list(spec.widths),
                "depths": list(spec.block_depths()),
                "stem_stride": spec.stem_stride,
                "stem_kernel": spec.stem_kernel,
                "views": spec.views,
                "dropout": opts.dropout,
                "learnt_as": target_names,
                "params": int(model.count_params()),
                "macs": count_macs(spec),
                "sha256": sha256_file(tmp / KERAS_FILE),  # convert, evaluate and adapt check it (a model of another run)
            },
            "training": {
                "epochs_max": opts.epochs,
                "epochs_run": history["epochs_run"],
                "best_epoch": history["best_epoch"],
                "seconds": seconds,
                "batch_size": opts.batch_size,
                "learning_rate": opts.learning_rate,
                "augment": opts.augment,
                "tensorflow": tf.__version__,
                "keras": tf.keras.__version__,
            },
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
            "edgecell_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        RunFolder.from_dict(tmp, meta).write(tmp)  # validated as every reader validates it
    if replaced:
        con.print(f"[yellow]note:[/yellow] {replaced}", soft_wrap=True)
    n_seen = history["epochs_run"] * len(tr)
    return TrainResult(
        run_dir=Path(opts.out_dir),
        test_metrics=metrics,
        epochs_run=history["epochs_run"],
        best_epoch=history["best_epoch"],
        seconds=seconds,
        images_per_second=n_seen / seconds if seconds else 0.0,
        temperature=temperature,
        skipped=len(ds.skipped),
        cv=cv,
        counts=ds.counts(),
    )
