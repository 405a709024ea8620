"""src/tools/base/files.py through the scripts that write (issue 18, items 4, 5 and 7): an output never
overwrites an input or lands in a folder that is read; nothing but a regular file is ever replaced
(a symbolic link is written through to its file); leftovers of killed writers go; a full disk is
named as such.

The model is a deploy-form RepVGG-A0 with 3 classes and untrained weights (what it predicts does not
matter here), saved as a checkpoint and exported to ONNX once.
"""
import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys

import mindspore as ms
import pytest

from src.repvgg import create_model
from src.tools.base.cli import UserError
from src.tools.base.files import atomic_path
from src.tools.deployment.export import export_network
from src.tools.image_folders import solid_folder
from tests.helpers import assert_ends_with_error, assert_one_line_error, run_main

ARCH, CLASSES, SIZE = 'RepVGG-A0', 3, 32


@pytest.fixture(scope='module', name='work')
def fixture_work(tmp_path_factory):
    """data/{train,val}/class_<i>/*.png, a config, a checkpoint and its ONNX export."""
    ms.set_device('CPU')  # before the module's first kernel (the per-test fixture sets it again)
    ms.set_context(mode=ms.GRAPH_MODE)
    root = tmp_path_factory.mktemp('files')
    for split in ('train', 'val'):
        solid_folder(root / 'data' / split, [2] * CLASSES, size=(SIZE, SIZE))
    config = root / 'cpu.yaml'
    config.write_text(f'arch: {ARCH}\nnum_classes: {CLASSES}\nimage_size: {SIZE}\nbatch_size: 2\n'
                      'device_target: CPU\nnum_parallel_workers: 1\n', encoding='utf-8')
    net = create_model(ARCH, num_classes=CLASSES, deploy=True)
    net.set_train(False)
    checkpoint = root / 'model.ckpt'
    ms.save_checkpoint(net, str(checkpoint))
    onnx_path, _, _ = export_network(net, SIZE, 'ONNX', root / 'model')
    return dict(root=root, data=root / 'data', config=config, ckpt=checkpoint, onnx=onnx_path)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob('*'))


def common(work):
    return ['--config', work['config'], '--pretrained', work['ckpt']]


# ----------------------------------------------------------------------------- 4. outputs apart from inputs
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(work, tmp_path, capsys):
    """The same file by name, through a symbolic link (an export path whose file is a link to the
    checkpoint being exported), or as a hard link."""
    ckpt, onnx_file, image = work['ckpt'], work['onnx'], work['data'] / 'val' / 'class_0' / '000.png'
    link = tmp_path / 'out.onnx'
    link.symlink_to(ckpt)
    hard = tmp_path / 'hard.ckpt'
    os.link(ckpt, hard)
    cases = [
        ('infer.py', [*common(work), '--dataset_path', image.parent, '--pred_output', ckpt], ckpt,
         ('pred_output', 'same file as pretrained')),
        ('infer.py', [*common(work), '--dataset_path', image, '--pred_output', image], image,
         ('pred_output', 'same file as dataset_path')),
        ('infer.py', [*common(work), '--dataset_path', image, '--pred_output', work['config']], work['config'],
         ('pred_output', 'same file as config')),
        ('infer_onnx.py', [image, '-c', onnx_file, '-o', onnx_file], onnx_file,
         ('--output', 'same file as --onnx_path')),
        ('export.py', [*common(work), '--file_format', 'ONNX', '--export_path', tmp_path / 'out'], ckpt,
         (f'export_path {link} is the same file as pretrained',)),
        ('convert.py', ['--input', ckpt, '--output', ckpt], ckpt, ('--output', 'same file as --input')),
        ('convert.py', ['--input', ckpt, '--output', hard], ckpt, ('--output', 'same file as --input')),
        ('vis_img_preprocessing.py', ['--config', work['config'], '--data_url', work['data'], '--output',
                                      work['config']], work['config'], ('--output', 'same file as config')),
    ]
    for script, argv, kept, fragments in cases:
        before = digest(kept)
        status, _, err = run_main(capsys, script, *argv)
        assert_one_line_error(status, err, *fragments, 'writing it would destroy an input')
        assert digest(kept) == before, (script, argv)
    assert link.is_symlink() and hard.stat().st_nlink == 2
    assert listing(tmp_path) == ['hard.ckpt', 'out.onnx']


def test_an_output_inside_a_folder_that_is_read_is_refused(work, capsys):
    data = work['data']
    before = listing(data)
    cases = [
        ('infer.py', [*common(work), '--dataset_path', data / 'val' / 'class_1', '--pred_output',
                      data / 'val' / 'class_1' / 'p.json'], 'pred_output', 'inside dataset_path'),
        ('infer_onnx.py', [data / 'val', '-c', work['onnx'], '-o', data / 'val' / 'class_0' / 'p.json'],
         '--output', 'inside dataset_path'),
        ('eval.py', [*common(work), '--dataset_path', data / 'val', '--report_dir', data / 'val'],
         'report_dir', 'is validation folder'),
        ('eval.py', [*common(work), '--data_url', data, '--report_dir', data / 'val' / 'report'],
         'report_dir', 'inside validation folder'),
        ('eval_onnx.py', [data / 'val', '-c', work['onnx'], '--report_dir', data / 'val' / 'class_2' / 'r'],
         '--report_dir', 'inside validation folder'),
        ('export.py', [*common(work), '--file_format', 'ONNX', '--quantize', 'int8', '--data_url', data,
                       '--export_path', data / 'train' / 'int8'], 'export_path', 'inside calibration folder'),
        ('vis_img_preprocessing.py', ['--config', work['config'], '--data_url', data, '--output',
                                      data / 'train' / 'class_0' / 'v.png'], '--output', 'inside training folder'),
    ]
    for script, argv, label, fragment in cases:
        status, _, err = run_main(capsys, script, *argv)
        assert_one_line_error(status, err, label, fragment, 'a folder that is read')
    assert listing(data) == before


def test_train_url_inside_the_data_is_refused_before_anything_is_written(work, tmp_path, capsys):
    data = tmp_path / 'data'
    solid_folder(data / 'train', [2] * CLASSES, size=(SIZE, SIZE))
    solid_folder(data / 'val', [1] * CLASSES, size=(SIZE, SIZE))
    before = listing(data)
    for inside in (data / 'train' / 'runs', data / 'val'):
        status, _, err = run_main(capsys, 'train.py', '--config', work['config'], '--data_url', data,
                                  '--train_url', inside)
        assert_one_line_error(status, err, f'train_url {inside} ', 'a folder that is read')
    assert listing(data) == before


# ----------------------------------------------------------------------------- 5. only regular files are replaced
def special_files(folder):
    """{kind: path} of a FIFO, a Unix socket, a folder and (where this process may make one) a
    character device like /dev/full (its numbers), all inside ``folder``; each ends with ``.out``."""
    folder.mkdir(exist_ok=True)
    made = {'fifo': folder / 'fifo.out', 'socket': folder / 's.out', 'folder': folder / 'dir.out'}
    os.mkfifo(made['fifo'])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made['socket']))
    server.close()  # the socket file stays
    made['folder'].mkdir()
    try:
        os.mknod(folder / 'dev.out', 0o600 | stat.S_IFCHR, os.makedev(1, 7))
        made['device'] = folder / 'dev.out'
    except (PermissionError, OSError):
        pass
    return made


def kind_of(path):
    mode = os.lstat(path).st_mode
    return [name for name, test in (('fifo', stat.S_ISFIFO), ('socket', stat.S_ISSOCK), ('folder', stat.S_ISDIR),
                                    ('device', stat.S_ISCHR), ('link', stat.S_ISLNK)) if test(mode)]


def named(special, suffix, folder):
    """The special files again, under names with ``suffix`` (links would be written through, so
    the files are renamed), plus a symbolic link to the FIFO."""
    renamed = {}
    for kind, path in special.items():
        renamed[kind] = folder / f'{kind}{suffix}'
        path.rename(renamed[kind])
    renamed['link to a fifo'] = folder / f'link{suffix}'
    renamed['link to a fifo'].symlink_to(renamed['fifo'])
    return renamed


def test_no_script_replaces_a_device_fifo_socket_or_folder(work, tmp_path, capsys):
    image = work['data'] / 'val' / 'class_0' / '000.png'
    targets = {
        '.json': lambda path: ('infer.py', [*common(work), '--dataset_path', image, '--pred_output', path]),
        '.png': lambda path: ('vis_img_preprocessing.py', ['--config', work['config'], '--data_url', work['data'],
                                                           '--output', path]),
        '.onnx': lambda path: ('export.py', [*common(work), '--file_format', 'ONNX', '--export_path', path]),
        '.ckpt': lambda path: ('convert.py', ['--input', work['ckpt'], '--output', path]),
    }
    for suffix, command in targets.items():
        folder = tmp_path / suffix[1:]
        special = named(special_files(folder), suffix, folder)
        for kind, path in special.items():
            script, argv = command(path)
            status, _, err = run_main(capsys, script, *argv)
            expected = 'is a folder' if kind == 'folder' else 'only a regular file is written or replaced'
            assert_one_line_error(status, err, str(path), expected)
            assert kind_of(path) == (['link'] if kind.startswith('link') else [kind]), (script, kind)
        assert sorted(listing(folder)) == sorted(path.name for path in special.values())


def test_report_files_and_train_url_are_checked_too(work, tmp_path, capsys):
    report = tmp_path / 'report'
    report.mkdir()
    os.mkfifo(report / 'confusion_matrix.png')
    status, _, err = run_main(capsys, 'eval_onnx.py', work['data'] / 'val', '-c', work['onnx'], '--report_dir', report)
    assert_one_line_error(status, err, f'report file {report / "confusion_matrix.png"} is a FIFO')
    assert listing(report) == ['confusion_matrix.png'] and kind_of(report / 'confusion_matrix.png') == ['fifo']
    fifo = tmp_path / 'runs'
    os.mkfifo(fifo)
    status, _, err = run_main(capsys, 'train.py', '--config', work['config'], '--data_url', work['data'],
                              '--train_url', fifo)
    assert_one_line_error(status, err, f'train_url {fifo} is a FIFO, not a folder')
    assert kind_of(fifo) == ['fifo']


def test_a_link_is_written_through_to_its_file_and_stays(work, tmp_path, capsys):
    target = tmp_path / 'results' / 'predictions.json'
    target.parent.mkdir()
    target.write_text('old\n')
    link = tmp_path / 'latest.json'
    link.symlink_to(target)
    status, _, err = run_main(capsys, 'infer_onnx.py', work['data'] / 'val' / 'class_0', '-c', work['onnx'],
                              '-o', link)
    assert status == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(json.loads(target.read_text())) == 2
    assert listing(tmp_path) == ['latest.json', 'results', 'results/predictions.json']


def test_a_special_file_that_appears_while_writing_is_not_replaced(tmp_path):
    """The up-front checks can be overtaken: atomic_path looks again just before its rename."""
    path = tmp_path / 'out.json'

    def write_while_a_fifo_appears():
        with atomic_path(path) as temporary:
            temporary.write_text('{}')
            os.mkfifo(path)

    with pytest.raises(UserError, match=re.escape('out.json is a FIFO: only a regular file')):
        write_while_a_fifo_appears()
    assert listing(tmp_path) == ['out.json'] and kind_of(path) == ['fifo']


# ----------------------------------------------------------------------------- 7. leftovers, a full disk
def dead_pid():
    """The pid of a process that has ended (and been waited for)."""
    finished = subprocess.Popen([sys.executable, '-c', 'pass'])
    finished.wait()
    return finished.pid


def test_an_export_removes_every_leftover_of_dead_writers_in_its_folder(work, tmp_path, capsys):
    dead = dead_pid()
    stale = [tmp_path / f'.other.onnx.{dead}.partial-x1y2', tmp_path / f'.p.json.{dead}.partial.json',
             tmp_path / f'.m.mindir.{dead}.partial.mindir']
    stale[0].mkdir()
    (stale[0] / 'model.onnx').write_bytes(b'\0' * 64)
    for path in stale[1:]:
        path.write_bytes(b'{')
    live = tmp_path / f'.other.onnx.{os.getpid()}.partial-live'  # a writer that is still running
    live.mkdir()
    status, _, err = run_main(capsys, 'export.py', *common(work), '--file_format', 'ONNX',
                              '--export_path', tmp_path / 'model')
    assert status == 0, err
    assert listing(tmp_path) == sorted([live.name, 'model.onnx'])


@pytest.fixture(name='small_disk')
def fixture_small_disk(tmp_path):
    """A 2 MiB tmpfs mounted inside tmp_path (skipped where mounting is not permitted)."""
    folder = tmp_path / 'small'
    folder.mkdir()
    try:
        done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(folder)], capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        pytest.skip('no mount command')
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    yield folder
    subprocess.run(['umount', str(folder)], check=False)


@pytest.mark.parametrize('file_format', ['ONNX', 'MINDIR'])
def test_an_export_onto_a_full_disk_says_so_and_leaves_nothing(work, small_disk, capsys, file_format):
    """The model (about 30 MB) does not fit on the 2 MiB file system. MindSpore's ONNX writer logs
    the failure and deletes its file; the error names the full disk, not the missing file."""
    status, _, err = run_main(capsys, 'export.py', *common(work), '--file_format', file_format,
                              '--export_path', small_disk / 'model')
    assert_ends_with_error(status, err, f'could not write {small_disk}/model.', 'no space left on the device')
    assert 'No such file' not in err.splitlines()[-1]
    assert listing(small_disk) == []
