"""Random erasing (Zhong et al. 2020) on normalised CHW float images, after Normalize, with timm's
settings (docs/data.md)."""
import math
import random

import numpy as np

MODES = ('const', 'rand', 'pixel')


class RandomErasing:
    """Callable on a (C, H, W) float32 array; returns a new array."""

    def __init__(self, probability=0.5, mode='pixel', count=1, min_area=0.02, max_area=1 / 3,
                 min_aspect=0.3, max_aspect=None, attempts=10):
        if mode not in MODES:
            raise ValueError(f'random erasing mode {mode!r}; choose one of {", ".join(MODES)}')
        self.probability, self.mode, self.count = probability, mode, count
        self.min_area, self.max_area, self.attempts = min_area, max_area, attempts
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _fill(self, channels, height, width):
        if self.mode == 'pixel':
            return np.random.standard_normal((channels, height, width)).astype(np.float32)
        if self.mode == 'rand':
            return np.random.standard_normal((channels, 1, 1)).astype(np.float32)
        return np.zeros((channels, 1, 1), np.float32)

    def boxes(self, height, width):
        """The rectangles (top, left, h, w) for one image; empty when erasing is skipped."""
        if random.random() >= self.probability:
            return []
        count = random.randint(1, self.count)
        boxes = []
        for _ in range(count):
            for _ in range(self.attempts):
                area = random.uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                box_h = round(math.sqrt(area * aspect))
                box_w = round(math.sqrt(area / aspect))
                if 0 < box_h < height and 0 < box_w < width:
                    boxes.append((random.randint(0, height - box_h), random.randint(0, width - box_w),
                                  box_h, box_w))
                    break
        return boxes

    def __call__(self, image):
        image = np.array(image, dtype=np.float32)  # a writable copy
        channels, height, width = image.shape
        for top, left, box_h, box_w in self.boxes(height, width):
            image[:, top:top + box_h, left:left + box_w] = self._fill(channels, box_h, box_w)
        return image
