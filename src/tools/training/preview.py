"""A picture of the training preprocessing (vis_img_preprocessing.py): originals next to augmented,
de-normalised draws."""
import itertools
from pathlib import Path

import numpy as np

from src.dataset import MEAN, STD, read_image_rgb, scan_split
from src.image_check import check_images
from src.tools.base.files import atomic_path


def pick_images(folder, count):
    """Up to ``count`` (path, class name) pairs, taking the classes in turn."""
    names, images = scan_split(folder)
    by_class = [[(Path(folder) / name / image, name) for image in images[name]] for name in names]
    return [pair for row in itertools.zip_longest(*by_class) for pair in row if pair is not None][:count]


def denormalize(chw):
    """Normalised (3, H, W) float -> (H, W, 3) in [0, 1] for display."""
    image = np.asarray(chw, np.float32).transpose(1, 2, 0)
    image = image * np.array(STD, np.float32) + np.array(MEAN, np.float32)
    return np.clip(image, 0.0, 1.0)


def augmented_draws(paths, stages, num_draws):
    """``num_draws`` runs of the train transform on each file, through a real pipeline (eager
    random ops would repeat one draw once a seed is set). Returns [[CHW float32] per draw] per path."""
    import mindspore.dataset as ds
    rows = [(np.fromfile(path, np.uint8),) for path in paths for _ in range(num_draws)]
    pipeline = ds.GeneratorDataset(rows, column_names=['image'], shuffle=False)
    for stage in stages:
        pipeline = pipeline.map(stage.ops, input_columns='image', num_parallel_workers=1)
    images = [row[0] for row in pipeline.create_tuple_iterator(output_numpy=True, num_epochs=1)]
    return [images[i * num_draws:(i + 1) * num_draws] for i in range(len(paths))]


def draw_preprocessing(folder, transform, output, seed=0, num_images=4, num_draws=5):
    """Write the PNG grid of ``transform`` drawn with ``seed`` on images of ``folder``'s classes."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mindspore.dataset as ds

    chosen = pick_images(folder, num_images)
    check_images([path for path, _ in chosen], show_progress=False)
    ds.config.set_seed(seed)  # the same draws for the same seed
    draws = augmented_draws([path for path, _ in chosen], transform.stages(), num_draws)
    figure, axes = plt.subplots(len(chosen), num_draws + 1, squeeze=False,
                                figsize=(1.9 * (num_draws + 1), 2.1 * len(chosen) + 0.6))
    for row, (path, class_name) in enumerate(chosen):
        original = read_image_rgb(path)
        axes[row][0].imshow(np.asarray(original))
        width, height = original.size
        axes[row][0].set_title(f'class {class_name}: {path.name}\noriginal, {width}x{height}', fontsize=8)
        for column, image in enumerate(draws[row], start=1):
            axes[row][column].imshow(denormalize(image))
            axes[row][column].set_title(f'draw {column}', fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f'Training preprocessing ({transform.describe()}); draws de-normalised', fontsize=9)
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as temporary:
        figure.savefig(temporary, dpi=110, format='png')
    plt.close(figure)
    return output
