"""src/image_check.py: every file checked once, remembered in a manifest by size and mtime in the
user's cache folder (keyed by the data path, never beside the data), spread over ranks; full and
off modes; all ranks stop together on an unreadable file; the start-up line and its details."""
import os
import re
import stat
from pathlib import Path

import pytest
from PIL import Image

from src import dataset as data
from src.image_check import check_split, manifest_folder, read_manifest, user_cache_folder
from src.tools.base.cli import UserError
from src.tools.image_folders import solid_folder
from tests.helpers import batches, data_config


@pytest.fixture
def split(tmp_path):
    solid_folder(tmp_path / 'train', [5, 4])  # 9 images
    return tmp_path / 'train'


def names(split):
    _, images = data.scan_split(split)
    return [f'{name}/{image}' for name in sorted(images) for image in images[name]]


def counts(report):
    return report.files, report.unchanged, report.checked


def tree(folder):
    """{path: (size, mtime_ns, mode)} of everything under ``folder``, the folder itself included."""
    return {str(path): (path.lstat().st_size, path.lstat().st_mtime_ns, path.lstat().st_mode)
            for path in [Path(folder), *Path(folder).rglob('*')]}


def test_a_second_start_checks_only_new_or_changed_files(split, user_cache_folder):
    report = check_split(split, names(split))
    assert counts(report) == (9, 0, 9)
    folder = report.manifest
    assert folder.parent == user_cache_folder / 'repvgg' / 'image_check' and folder.name.startswith('train-')
    assert [path.name for path in folder.iterdir()] == ['rank0of1.tsv'] and len(read_manifest(folder)) == 9
    assert [path.name for path in split.parent.iterdir()] == ['train']  # nothing beside the data
    assert counts(check_split(split, names(split))) == (9, 9, 0)

    changed = split / 'class_0' / '000.png'
    Image.new('RGB', (30, 30), (1, 2, 3)).save(changed)  # rewritten in place: new size and time
    os.utime(split / 'class_1' / '005.png', ns=(1, 1))  # only the time differs
    assert counts(check_split(split, names(split))) == (9, 7, 2)
    assert counts(check_split(split, names(split))) == (9, 9, 0)

    (split / 'class_1' / 'new.png').write_bytes(b'not an image')
    with pytest.raises(UserError, match=r'^1 unreadable image\(s\): .*new\.png'):
        check_split(split, names(split))
    with pytest.raises(UserError, match=r'new\.png'):  # a bad file is never remembered as good
        check_split(split, names(split))
    assert 'class_1/new.png' not in read_manifest(folder) and len(read_manifest(folder)) == 9


def test_ranks_check_their_slices_and_a_later_start_trusts_every_part(split, tmp_path):
    reports = [check_split(split, names(split), rank=rank, group_size=2) for rank in (0, 1)]
    assert [counts(report) for report in reports] == [(5, 0, 5), (4, 0, 4)]
    folder = reports[0].manifest
    assert reports[1].manifest == folder
    assert sorted(path.name for path in folder.iterdir()) == ['rank0of2.tsv', 'rank1of2.tsv']
    assert counts(check_split(split, names(split))) == (9, 9, 0)  # one process now: both parts count
    cache = tmp_path / 'cache'
    report = check_split(split, names(split), cache_root=cache)  # image_check_cache: another folder
    assert counts(report) == (9, 0, 9) and report.manifest == manifest_folder(split, cache)
    assert report.manifest.parent == cache and report.manifest.name == folder.name


def test_the_manifest_is_keyed_by_the_resolved_data_path(tmp_path):
    for copy in ('a', 'b'):
        solid_folder(tmp_path / copy / 'train', [2, 2])
    (tmp_path / 'link').symlink_to(tmp_path / 'a')
    first, other = (check_split(tmp_path / copy / 'train', names(tmp_path / copy / 'train')) for copy in ('a', 'b'))
    assert counts(first) == counts(other) == (4, 0, 4) and first.manifest != other.manifest
    through_link = check_split(tmp_path / 'link' / 'train', names(tmp_path / 'link' / 'train'))
    assert counts(through_link) == (4, 4, 0) and through_link.manifest == first.manifest


def test_the_user_cache_folder_and_one_that_cannot_be_written(split, tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    for value in ('', 'relative/cache'):  # unset or not absolute: ~/.cache, as the XDG specification says
        monkeypatch.setenv('XDG_CACHE_HOME', value)
        assert user_cache_folder() == tmp_path / 'home' / '.cache' / 'repvgg' / 'image_check'
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'a_file'))  # no folder can be made there
    report = check_split(split, names(split))
    assert counts(report) == (9, 0, 9) and report.manifest is None
    assert report.summary() == '9 images checked, not remembered: no writable cache folder'
    assert not (tmp_path / 'home').exists()
    with pytest.raises(UserError, match=r'^image_check_cache .*a_file cannot be written; choose a writable folder'):
        check_split(split, names(split), cache_root=tmp_path / 'a_file')


def test_full_checks_every_time_and_writes_nothing_off_checks_nothing(split, user_cache_folder):
    cached = set(user_cache_folder.rglob('*'))
    for _ in range(2):
        assert counts(check_split(split, names(split), mode='full')) == (9, 0, 9)
    assert set(user_cache_folder.rglob('*')) == cached and [path.name for path in split.parent.iterdir()] == ['train']
    (split / 'class_0' / 'bad.png').write_bytes(b'')
    with pytest.raises(UserError, match='empty file'):
        check_split(split, names(split), mode='full')
    report = check_split(split, names(split), mode='off')
    assert counts(report) == (0, 0, 0) and report.describe() == 'image check off'


def test_every_rank_stops_when_any_rank_found_an_unreadable_file(split):
    (split / 'class_1' / 'zz.png').write_bytes(b'broken')  # the 10th file: rank 1's slice of 2
    all_ranks = lambda found: [found[0] + 1]  # the all-reduce: rank 1 found one  # noqa: E731
    with pytest.raises(UserError, match=r"^1 unreadable image\(s\), listed in the logs of the other ranks"):
        check_split(split, names(split), rank=0, group_size=2, total=all_ranks)
    with pytest.raises(UserError, match=r'zz\.png'):
        check_split(split, names(split), rank=1, group_size=2, total=lambda found: found)


def test_the_start_up_line_is_short_and_its_details_go_with_the_data_set(tmp_path, capsys):
    solid_folder(tmp_path / 'val', [3, 3])
    config = data_config(tmp_path, batch_size=2)
    folder = tmp_path / 'val'
    for summary, unchanged, checked in (('6 images checked', 0, 6), ('6 unchanged since checked', 6, 0)):
        dataset = data.get_dataset(config, training=False)
        line = capsys.readouterr().out.strip()
        assert re.fullmatch(rf'=> eval data {re.escape(str(folder))}: 6 images, 2 classes; start-up \d+\.\d s '
                            rf'\({summary}\)', line), line
        assert len(line) - len(str(folder)) <= 80  # was about 300
        manifest = manifest_folder(folder)
        assert re.fullmatch(rf'eval data {re.escape(str(folder.resolve()))}: 6 images, 2 classes, rank 0 of 1, '
                            rf'batch 2, eval transform, 16x16, bilinear; start-up: class scan \d+\.\d s, '
                            rf'image check \d+\.\d s \(cached: 6 files on this rank, {unchanged} unchanged since '
                            rf'checked, {checked} checked; '
                            rf'manifest {re.escape(str(manifest))}\), pipeline build \d+\.\d s', dataset.start_up)
    (folder / 'class_1' / '005.png').unlink()
    Image.new('RGB', (8, 8), (1, 2, 3)).save(folder / 'class_1' / '009.png')
    data.get_dataset(config, training=False)
    assert '(1 image checked, 5 unchanged since checked)' in capsys.readouterr().out
    data.get_dataset(data_config(tmp_path, batch_size=2, image_check='off'), training=False)
    assert re.search(r'; start-up \d+\.\d s \(image check off\)$', capsys.readouterr().out.strip())


def test_a_read_only_data_folder_gives_a_data_set_and_nothing_is_written_into_it(tmp_path):
    """chmod only: root writes regardless, so the tree comparison is what tells (train.py on a
    read-only mount: tests/test_train.py)."""
    solid_folder(tmp_path / 'data' / 'train', [3, 3])
    solid_folder(tmp_path / 'data' / 'val', [2, 2])
    folders = [tmp_path / 'data', *(tmp_path / 'data').rglob('*')]
    for path in folders:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = tree(tmp_path / 'data')
    try:
        config = data_config(tmp_path / 'data', batch_size=2, num_classes=2)
        assert len(batches(data.get_dataset(config, training=True))) == 3
        assert len(batches(data.get_dataset(config, training=False))) == 2
        assert tree(tmp_path / 'data') == before
    finally:
        for path in folders:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
