"""Batch Mixup / CutMix with smoothed soft targets: timm's ``Mixup`` semantics in numpy (docs/data.md).

Image i is mixed with image B-1-i; CutMix sets lam to the share of the image its clipped box leaves,
so that targets match pixels. Modes draw once per ``batch``, per ``pair`` (i, B-1-i) or per ``elem``.
"""
import numpy as np

MODES = ('batch', 'pair', 'elem')


def smoothed_one_hot(labels, num_classes, smoothing=0.0):
    """(B,) int -> (B, C) float32 with off = s/C and on = 1 - s + s/C."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}')
    off = smoothing / num_classes
    targets = np.full((labels.size, num_classes), off, np.float32)
    targets[np.arange(labels.size), labels] = 1.0 - smoothing + off
    return targets


def cutmix_box(height, width, lam, rng):
    """A box (top, bottom, left, right) of about 1 - lam of the image, and the lam it really leaves."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
    left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
    corrected = 1.0 - float((bottom - top) * (right - left)) / float(height * width)
    return (int(top), int(bottom), int(left), int(right)), corrected


class Mixup:
    """Callable on a batch (images (B, C, H, W) float32, labels (B,) int) -> (images, targets)."""

    def __init__(self, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5,
                 mode='batch', label_smoothing=0.0, seed=0):
        if mode not in MODES:
            raise ValueError(f'mixup mode {mode!r}; choose one of {", ".join(MODES)}')
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.mode, self.smoothing = prob, switch_prob, mode, label_smoothing
        self.rng = np.random.default_rng(seed)

    @property
    def active(self):
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, count):
        """``count`` (lam, use_cutmix) draws; lam 1 means 'leave as is'."""
        lam = np.ones(count)
        use_cutmix = np.zeros(count, bool)
        if not self.active:
            return lam, use_cutmix
        mix = self.rng.random(count) < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = self.rng.random(count) < self.switch_prob
            drawn = np.where(use_cutmix, self.rng.beta(self.cutmix_alpha, self.cutmix_alpha, count),
                             self.rng.beta(self.mixup_alpha, self.mixup_alpha, count))
        elif self.mixup_alpha > 0:
            drawn = self.rng.beta(self.mixup_alpha, self.mixup_alpha, count)
        else:
            use_cutmix = np.ones(count, bool)
            drawn = self.rng.beta(self.cutmix_alpha, self.cutmix_alpha, count)
        return np.where(mix, drawn, 1.0), use_cutmix & mix

    def _mix_one(self, target, source, lam, use_cutmix):
        """Mix ``source`` into ``target`` (..., H, W) in place; returns the effective lam."""
        if lam >= 1.0:
            return 1.0
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(target.shape[-2], target.shape[-1], lam, self.rng)
            target[..., top:bottom, left:right] = source[..., top:bottom, left:right]
            return lam
        target *= np.float32(lam)
        target += np.float32(1.0 - lam) * source
        return lam

    def mix_images(self, images):
        """Mix a copy of the batch; returns (mixed images, per-image lam (B,))."""
        original = np.asarray(images, np.float32)
        mixed = original.copy()
        batch = len(mixed)
        if self.mode == 'batch':
            lam, use_cutmix = self.draw(1)
            return mixed, np.full(batch, self._mix_one(mixed, original[::-1], lam[0], use_cutmix[0]))
        if self.mode == 'elem':
            lam, use_cutmix = self.draw(batch)
            for i in range(batch):
                lam[i] = self._mix_one(mixed[i], original[batch - 1 - i], lam[i], use_cutmix[i])
            return mixed, lam
        # pair: image i and its partner j (a view of both rows) get one mix; an odd middle image stays
        half = batch // 2
        lam, use_cutmix = self.draw(half)
        for i in range(half):
            j = batch - 1 - i
            lam[i] = self._mix_one(mixed[i:j + 1:j - i], original[[j, i]], lam[i], use_cutmix[i])
        return mixed, np.concatenate([lam, np.ones(batch % 2), lam[::-1]])

    def __call__(self, images, labels):
        mixed, lam = self.mix_images(images)
        targets = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        lam = lam.astype(np.float32)[:, None]
        targets = lam * targets + (1.0 - lam) * targets[::-1]
        return mixed.astype(np.float32), targets.astype(np.float32)
