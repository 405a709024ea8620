"""Checking, before a pipeline is built, that every image of a split can be decoded; once per file.

A file is checked cheaply (``inspect_image``: the header, and the end marker of a JPEG / PNG). The
check is spread over the ranks and remembered in a manifest per split in the user's cache folder,
never beside the data (``image_check``: cached, full, off); docs/data.md, "Unreadable images", and
docs/scale-out.md for its cost at ImageNet size. Inference also reads the EXIF orientation.
"""
import contextlib
import functools
import hashlib
import os
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from src.tools.base.cli import UserError
from src.tools.base.files import write_text_atomic

# Formats MindSpore's C++ Decode reads (MPO: multi-picture JPEG written by some cameras).
DECODABLE_FORMATS = ('JPEG', 'MPO', 'PNG', 'BMP', 'TIFF')
MANIFEST_HEADER = '# files of this split that passed the image check: relative path, size, mtime_ns'
EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: mirrored and / or turned by 90, 180 or 270 degrees


def _ends_cleanly(path, image_format):
    """Whether a JPEG / PNG file ends with its end-of-image marker (a cheap truncation test)."""
    with open(path, 'rb') as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 1024))
        tail = handle.read()
    if image_format == 'PNG':
        return tail.endswith(b'IEND\xaeB`\x82')
    return b'\xff\xd9' in tail  # JPEG EOI; some writers append bytes after it


def inspect_image(path, orientation=False):
    """(why ``path`` cannot be decoded or None, whether its EXIF orientation turns it, when asked). Reads
    the header and the tail of JPEG / PNG files; only a file without an end marker, or of another
    format, is decoded in full."""
    try:
        if os.path.getsize(path) == 0:
            return 'empty file', False
        with Image.open(path) as img:
            image_format, (width, height) = img.format, img.size
            if image_format not in DECODABLE_FORMATS:
                return f'{image_format} data, which the decoder cannot read; convert it to PNG or JPEG', False
            if width == 0 or height == 0:
                return 'image has no pixels', False
            turned = orientation and _turned(img)
            marker_format = 'PNG' if image_format == 'PNG' else 'JPEG'
            if image_format in ('JPEG', 'MPO', 'PNG') and _ends_cleanly(path, marker_format):
                return None, turned
            img.load()  # no end marker (or BMP / TIFF): decode to be sure
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f'cannot be decoded: {error}', False
    return None, turned


def _turned(img):
    """Whether the EXIF orientation of an open image is other than 'as stored'. A PNG whose EXIF
    chunk follows the pixels would need them decoded, so only one before them counts."""
    if img.format == 'PNG' and 'exif' not in img.info:
        return False
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):  # Pillow warns on most damage
        return False  # a damaged EXIF block costs the note, not the image


def _inspect_all(paths, show_progress, threads=8, orientation=False):
    """([(path, problem)] of the unreadable ``paths``, [those their EXIF orientation turns])."""
    from tqdm import tqdm
    with ThreadPoolExecutor(threads) as pool:
        results = list(tqdm(pool.map(functools.partial(inspect_image, orientation=orientation), paths, chunksize=64),
                            total=len(paths), desc='check images', unit='img', leave=False,
                            disable=not show_progress or len(paths) < 2000))
    pairs = list(zip(paths, results, strict=True))
    return [(path, problem) for path, (problem, _) in pairs if problem], [path for path, (_, turned) in pairs if turned]


def refuse_unreadable(bad, count=None):
    """List ``bad`` [(path, problem)] on stderr and raise one UserError naming the first ones.
    ``count``: the number of unreadable files of all ranks, when more than this rank's."""
    count = len(bad) if count is None else count
    if count > 3:  # the error line names three
        for path, problem in bad:
            print(f'unreadable image: {path}: {problem}', file=sys.stderr)
    shown = '; '.join(f'{path} ({problem})' for path, problem in bad[:3])
    if not bad:
        raise UserError(f'{count} unreadable image(s), listed in the logs of the other ranks; fix or remove '
                        f'them and run again')
    more = f'; and {count - min(3, len(bad))} more (listed above or in the other ranks\' logs)' if count > 3 else ''
    raise UserError(f'{count} unreadable image(s): {shown}{more}; fix or remove them and run again')


def check_images(paths, show_progress=True, threads=8):
    """Raise a UserError listing every unreadable image among ``paths``; return those whose EXIF
    orientation turns or mirrors them (no pipeline here applies it)."""
    bad, turned = _inspect_all(list(paths), show_progress, threads, orientation=True)
    if bad:
        refuse_unreadable(bad)
    return turned


@dataclass
class CheckReport:
    """What the check of one rank's slice did, for the start-up line."""
    mode: str
    files: int = 0          # in this rank's slice
    unchanged: int = 0      # passed an earlier check and have the same size and mtime (cached)
    checked: int = 0        # opened now
    seconds: float = 0.0
    manifest: Path = None
    ranks: int = 1

    def summary(self):
        """What the check did, in a few words (the start-up line)."""
        if self.mode == 'off':
            return 'image check off'
        parts = [f'{self.unchanged} unchanged since checked'] if self.unchanged else []
        if self.checked or not self.unchanged:
            parts.insert(0, f'{self.checked} image{"s" * (self.checked != 1)} checked')
        if self.mode == 'cached' and self.manifest is None:
            parts.append('not remembered: no writable cache folder')
        return ', '.join(parts) + (' on this rank' if self.ranks > 1 else '')

    def describe(self):
        """Everything the check did, with its time and manifest folder (the run folder's startup.log)."""
        if self.mode == 'off':
            return 'image check off'
        text = f'image check {self.seconds:.1f} s ({self.mode}: {self.files} files on this rank'
        if self.mode == 'cached' and self.manifest is None:
            text += ', all checked: no writable folder for the manifest'
        elif self.mode == 'cached':
            text += f', {self.unchanged} unchanged since checked, {self.checked} checked; manifest {self.manifest}'
        return text + ')'


def user_cache_folder():
    """$XDG_CACHE_HOME (when absolute, as the XDG spec asks) or ~/.cache, then repvgg/image_check."""
    root = os.environ.get('XDG_CACHE_HOME', '')
    root = Path(root) if os.path.isabs(root) else Path.home() / '.cache'
    return root / 'repvgg' / 'image_check'


def manifest_folder(split_folder, cache_root=None):
    """Where the manifest parts of ``split_folder`` live (see the module docstring), created; None
    when the default cache folder cannot be written (an explicit ``cache_root`` must be writable)."""
    split_folder = Path(split_folder).resolve()
    tag = f'{split_folder.name}-{hashlib.blake2b(str(split_folder).encode(), digest_size=6).hexdigest()}'
    folder = Path(cache_root if cache_root is not None else user_cache_folder()) / tag
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    if cache_root is not None:
        raise UserError(f'image_check_cache {cache_root} cannot be written; choose a writable folder, or set '
                        f'image_check: full')
    return None


def read_manifest(folder):
    """{relative path: (size, mtime_ns)} from every part in ``folder`` (any rank count, any age: each
    entry is only trusted while the file's size and time still match it)."""
    known = {}
    for part in sorted(Path(folder).glob('rank*of*.tsv')):
        try:
            lines = part.read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError):
            continue  # an unreadable part only costs a re-check
        for line in lines:
            fields = line.split('\t')
            if len(fields) == 3 and not line.startswith('#'):
                with contextlib.suppress(ValueError):  # a damaged line only costs a re-check
                    known[fields[0]] = (int(fields[1]), int(fields[2]))
    return known


def _signature(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None  # a broken link, a vanished file: checked, and reported there
    return stat.st_size, stat.st_mtime_ns


def check_split(split_folder, names, mode='cached', rank=0, group_size=1, cache_root=None, total=None):
    """Check this rank's slice ``names[rank::group_size]`` ('<class>/<file>') of a split's images; a
    CheckReport. ``total`` sums numbers over ranks, so that every rank stops when any found a bad file."""
    began = time.perf_counter()
    report = CheckReport(mode, ranks=group_size)
    if mode == 'off':
        return report
    root = str(split_folder)
    mine = list(names)[rank::group_size]
    report.files = len(mine)
    folder = manifest_folder(split_folder, cache_root) if mode == 'cached' else None
    known = read_manifest(folder) if folder is not None else {}
    signatures, todo = {}, []
    for name in mine:
        signature = _signature(os.path.join(root, name)) if folder is not None else None
        if signature is not None:
            signatures[name] = signature
        if signature is None or known.get(name) != signature:
            todo.append(name)
    report.unchanged, report.checked = len(mine) - len(todo), len(todo)
    bad, _ = _inspect_all([os.path.join(root, name) for name in todo], show_progress=rank == 0)
    part = folder / f'rank{rank}of{group_size}.tsv' if folder is not None else None
    if part is not None and (todo or not part.exists()):
        failed = {os.path.relpath(path, root).replace(os.sep, '/') for path, _ in bad}
        lines = [f'{name}\t{size}\t{mtime}' for name, (size, mtime) in sorted(signatures.items()) if name not in failed]
        write_text_atomic(part, '\n'.join([MANIFEST_HEADER, *lines]) + '\n')
    report.manifest = folder
    report.seconds = time.perf_counter() - began
    count = len(bad) if total is None else int(total([len(bad)])[0])
    if count:
        refuse_unreadable(bad, count)
    return report
