"""src/image_check.py: every file checked once, remembered in a manifest by size and mtime,
spread over ranks; full and off modes; all ranks stop together on an unreadable file."""
import os

import pytest
from PIL import Image

from src import dataset as data
from src.image_check import check_split, manifest_folder, read_manifest
from src.tools.base.cli import UserError
from tests.image_folders import data_config, solid_folder


@pytest.fixture
def split(tmp_path):
    solid_folder(tmp_path / 'train', [5, 4])  # 9 images
    return tmp_path / 'train'


def names(split):
    _, images = data.scan_split(split)
    return [f'{name}/{image}' for name in sorted(images) for image in images[name]]


def counts(report):
    return report.files, report.unchanged, report.checked


def test_a_second_start_checks_only_new_or_changed_files(split):
    assert counts(check_split(split, names(split))) == (9, 0, 9)
    folder = split.parent / '.image_check' / 'train'
    assert [path.name for path in folder.iterdir()] == ['rank0of1.tsv'] and len(read_manifest(folder)) == 9
    assert counts(check_split(split, names(split))) == (9, 9, 0)

    changed = split / 'class_0' / '000.png'
    Image.new('RGB', (30, 30), (1, 2, 3)).save(changed)  # rewritten in place: new size and time
    os.utime(split / 'class_1' / '005.png', ns=(1, 1))  # only the time differs
    assert counts(check_split(split, names(split))) == (9, 7, 2)
    assert counts(check_split(split, names(split))) == (9, 9, 0)

    (split / 'class_1' / 'new.png').write_bytes(b'not an image')
    with pytest.raises(UserError, match=r'^1 unreadable image\(s\): .*new\.png'):
        check_split(split, names(split))
    with pytest.raises(UserError, match='new.png'):  # a bad file is never remembered as good
        check_split(split, names(split))
    assert 'class_1/new.png' not in read_manifest(folder) and len(read_manifest(folder)) == 9


def test_ranks_check_their_slices_and_a_later_start_trusts_every_part(split, tmp_path):
    reports = [check_split(split, names(split), rank=rank, group_size=2) for rank in (0, 1)]
    assert [counts(report) for report in reports] == [(5, 0, 5), (4, 0, 4)]
    folder = split.parent / '.image_check' / 'train'
    assert sorted(path.name for path in folder.iterdir()) == ['rank0of2.tsv', 'rank1of2.tsv']
    assert counts(check_split(split, names(split))) == (9, 9, 0)  # one process now: both parts count
    cache = tmp_path / 'cache'
    report = check_split(split, names(split), cache_root=cache)
    assert counts(report) == (9, 0, 9) and report.manifest == manifest_folder(split, cache)
    assert report.manifest.parent == cache and report.manifest.name.startswith('train-')


def test_full_checks_every_time_and_writes_nothing_off_checks_nothing(split):
    for _ in range(2):
        assert counts(check_split(split, names(split), mode='full')) == (9, 0, 9)
    assert not (split.parent / '.image_check').exists()
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
    with pytest.raises(UserError, match='zz.png'):
        check_split(split, names(split), rank=1, group_size=2, total=lambda found: found)


def test_the_pipeline_says_what_the_start_up_did(tmp_path, capsys):
    solid_folder(tmp_path / 'val', [3, 3])
    config = data_config(tmp_path, batch_size=2)
    for unchanged, checked in ((0, 6), (6, 0)):
        data.get_dataset(config, training=False)
        line = capsys.readouterr().out.strip()
        assert line.startswith(f'=> eval data {tmp_path / "val"}: 6 images, 2 classes, 1 device(s), batch 2, '
                               f'eval transform; start-up: class scan ')
        assert (f'(cached: 6 files on this rank, {unchanged} unchanged since checked, {checked} checked; '
                f'manifest {tmp_path / ".image_check" / "val"}), pipeline build ') in line
    data.get_dataset(data_config(tmp_path, batch_size=2, image_check='off'), training=False)
    assert ', image check off, pipeline build ' in capsys.readouterr().out
