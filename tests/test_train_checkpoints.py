"""Training checkpoints (src/tools/checkpoints/, src/tools/training/run_folder.py): atomic writes,
names and retention (last N, best N), resume positions, restored state, pretrained weights."""
import multiprocessing
import os
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.config import make_config
from src.ema.ema import EMA
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import create_model
from src.tools.base.cli import UserError
from src.tools.base.files import remove_partial_files
from src.tools.checkpoints import format as checkpoint_format
from src.tools.checkpoints.format import load_weights, save_checkpoint, train_state
from src.tools.checkpoints.model_card import ModelCard
from src.tools.checkpoints.saver import CheckpointSaver
from src.tools.training.amp import loss_scale_cell
from src.tools.training.criterion import CrossEntropy, NetWithLoss
from src.tools.training.distributed import Ranks
from src.tools.training.optimizer import get_optimizer
from src.tools.training.resume import (
    check_continues,
    first_readable,
    restore_state,
    resume_candidates,
    schedule_changes,
    start_position,
    start_run,
    starting_point,
)
from src.tools.training.run_folder import MetricsLog, new_run_folder, run_folder_name, save_config

ARCH = 'RepVGG-A0'


def train_cell(num_classes=10, with_ema=True, seed=0):
    ms.set_seed(seed)
    net = create_model(ARCH, num_classes=num_classes)
    optimizer = get_optimizer(make_config(), net, np.full(100, 0.1, np.float32))
    ema = EMA(net.get_parameters(), 0.9) if with_ema else None
    cell = TrainOneStepWithEMA(NetWithLoss(net, CrossEntropy()), optimizer, loss_scale_cell('O2', 1.0, True), ema)
    return net, optimizer, ema, cell


def tiny_entries(value=1.0):
    return [{'name': 'linear.bias', 'data': Tensor(np.full(3, value, np.float32))}]


# ----------------------------------------------------------------------------- atomic writes
def test_save_atomic_writes_a_loadable_file_and_no_temporaries(tmp_path):
    path = save_checkpoint(tiny_entries(2.0), tmp_path / 'a.ckpt', {'epoch_num': 3})
    loaded = ms.load_checkpoint(str(path))
    assert loaded['linear.bias'].asnumpy().tolist() == [2.0] * 3 and int(loaded['epoch_num'].asnumpy()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.ckpt']


def test_a_write_killed_midway_leaves_the_old_checkpoint_and_nothing_else(tmp_path, monkeypatch):
    target = save_checkpoint(tiny_entries(1.0), tmp_path / 'a.ckpt')

    def dies_while_writing(_entries, name, **_):
        with open(name, 'wb') as handle:  # half a file, then the process "dies"
            handle.write(b'\x00' * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, 'save_checkpoint', dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_entries(5.0), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.ckpt']
    assert ms.load_checkpoint(str(target))['linear.bias'].asnumpy().tolist() == [1.0] * 3


def test_leftovers_of_a_sigkilled_writer_are_hidden_and_cleaned(tmp_path):
    (tmp_path / f'.{ARCH}_0-1_4.123.partial.tmp').write_bytes(b'x')
    (tmp_path / f'{ARCH}_0-1_2.ckpt').write_bytes(b'x')
    saver = CheckpointSaver(tmp_path, ARCH, 0, 3, 1)
    assert list(saver.periodic()) == [(1, 2)]  # a hidden temporary is never a checkpoint
    remove_partial_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{ARCH}_0-1_2.ckpt']


# ----------------------------------------------------------------------------- names and retention
def test_periodic_checkpoints_keep_the_newest_n_with_position_inside(tmp_path):
    saver = CheckpointSaver(tmp_path, ARCH, rank=1, keep_last=2, keep_best=1)
    for epoch, step in [(1, 5), (1, 10), (2, 5), (2, 10), (3, 5)]:
        saver.save_periodic(tiny_entries(), {'epoch_num': epoch, 'step_num': step, 'steps_per_epoch': 10})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{ARCH}_1-2_10.ckpt', f'{ARCH}_1-3_5.ckpt']
    newest = ms.load_checkpoint(str(tmp_path / f'{ARCH}_1-3_5.ckpt'))
    assert int(newest['epoch_num'].asnumpy()) == 3 and int(newest['step_num'].asnumpy()) == 5


def test_best_checkpoints_keep_the_n_best_older_first_on_ties(tmp_path):
    saver = CheckpointSaver(tmp_path, ARCH, rank=0, keep_last=1, keep_best=2)
    written = [saver.save_best(tiny_entries(), {'epoch_num': epoch}, epoch, acc)
               for epoch, acc in enumerate([0.5, 0.7, 0.7, 0.6, 0.91234, 0.7], start=1)]
    assert [p is not None for p in written] == [True, True, True, False, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{ARCH}_epoch=2_acc=0.7000.ckpt',
                                                          f'{ARCH}_epoch=5_acc=0.9123.ckpt']
    assert [(acc, epoch) for acc, epoch, _ in saver.best()] == [(0.9123, 5), (0.7, 2)]
    assert saver.save_best(tiny_entries(), {}, 5, 0.91234) is None  # there already (a resumed run asks again)
    saver.forget_after(4)
    assert [epoch for _, epoch, _ in saver.best()] == [2]


def test_no_best_checkpoints_when_keep_best_is_zero_and_keep_last_must_be_positive(tmp_path):
    assert CheckpointSaver(tmp_path, ARCH, 0, 1, 0).save_best(tiny_entries(), {}, 1, 0.9) is None
    with pytest.raises(UserError, match='keep_checkpoint_max'):
        CheckpointSaver(tmp_path, ARCH, 0, 0, 1)


def test_resume_takes_the_newest_position_that_every_rank_reached(tmp_path):
    for rank, positions in ((0, [(1, 4), (2, 2)]), (1, [(1, 4)])):
        for epoch, step in positions:
            (tmp_path / f'{ARCH}_{rank}-{epoch}_{step}.ckpt').write_bytes(b'x')
    assert resume_candidates(CheckpointSaver(tmp_path, ARCH, 1, 5, 1), 2)[0].name == f'{ARCH}_1-1_4.ckpt'
    assert resume_candidates(CheckpointSaver(tmp_path, ARCH, 0, 5, 1), 1)[0].name == f'{ARCH}_0-2_2.ckpt'
    with pytest.raises(UserError, match=r'nothing to resume yet: .* holds no periodic checkpoint'):
        resume_candidates(CheckpointSaver(tmp_path / 'nothing', ARCH, 0, 5, 1), 1)


@pytest.mark.parametrize('epoch_num, step_num, expected', [(3, 4, (2, 4)), (3, 10, (3, 0)), (1, 1, (0, 1))])
def test_start_position_after_a_checkpoint(epoch_num, step_num, expected):
    checkpoint = {'epoch_num': Tensor(epoch_num), 'step_num': Tensor(step_num), 'steps_per_epoch': Tensor(10)}
    assert start_position(checkpoint, 10) == expected
    assert start_position({}, 10) is None


# ----------------------------------------------------------------------------- state
def test_train_state_round_trips_weights_optimizer_ema_and_loss_scale(tmp_path):
    _, optimizer, ema, cell = train_cell()
    rng = np.random.default_rng(0)
    for param in list(optimizer.moments) + list(ema.shadow):
        param.set_data(Tensor(rng.normal(size=param.shape).astype(np.float32)))
    cell.scale_sense.set_data(Tensor(128.0, ms.float32))
    entries, append = train_state(cell, 2, 7, 10, ModelCard(ARCH, 10))
    path = save_checkpoint(entries, tmp_path / 'state.ckpt', append)
    saved = ms.load_checkpoint(str(path))
    assert 'learning_rate' not in saved and saved['arch'] == ARCH
    assert any(name.startswith('moments.') for name in saved) and any(name.startswith('ema.') for name in saved)

    net2, optimizer2, ema2, cell2 = train_cell(seed=5)
    load_weights(net2, saved)
    load_weights(net2, saved, prefix='ema.')  # the EMA copies load into a plain network too
    restored = restore_state(cell2, saved)
    assert 'scale_sense' in restored and float(cell2.scale_sense.asnumpy()) == 128.0
    for a, b in zip([*optimizer.moments, *ema.shadow], [*optimizer2.moments, *ema2.shadow], strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


# ----------------------------------------------------------------------------- starting points
def start_args(tmp_path, **overrides):
    values = dict(arch=ARCH, num_classes=10, epochs=5, train_url=tmp_path)
    values.update(overrides)
    return make_config(**values)


def saved_state(tmp_path, num_classes, epoch_num=3, step_num=4, arch=ARCH, name='pre.ckpt'):
    _, _, _, cell = train_cell(num_classes=num_classes, seed=3)
    entries, append = train_state(cell, epoch_num, step_num, 10, ModelCard(arch, num_classes))
    return save_checkpoint(entries, tmp_path / name, append), cell


def test_pretrained_with_another_class_count_drops_the_head_and_the_epoch_state(tmp_path):
    path, source_cell = saved_state(tmp_path, num_classes=5)
    net = create_model(ARCH, num_classes=10)
    head = net.linear.weight.asnumpy().copy()
    start = starting_point(start_args(tmp_path, pretrained=path), net, steps_per_epoch=10)
    assert (start.epoch, start.step, start.checkpoint) == (0, 0, None)
    source = {p.name: p.asnumpy() for p in source_cell.network.network.get_parameters()}
    np.testing.assert_array_equal(net.stage3[5].rbr_dense.conv.weight.asnumpy(),
                                  source['stage3.5.rbr_dense.conv.weight'])
    np.testing.assert_array_equal(net.linear.weight.asnumpy(), head)  # new head, untouched


@pytest.mark.slow
def test_pretrained_keeps_the_epoch_state_unless_excluded(tmp_path):
    path, _ = saved_state(tmp_path, num_classes=10)
    net = create_model(ARCH, num_classes=10)
    start = starting_point(start_args(tmp_path, pretrained=path), net, 10)
    assert (start.epoch, start.step) == (2, 4) and start.checkpoint is not None
    start = starting_point(start_args(tmp_path, pretrained=path, exclude_epoch_state=1, start_epoch=1), net, 10)
    assert (start.epoch, start.step, start.checkpoint) == (1, 0, None)
    with pytest.raises(UserError, match='raise epochs, or set exclude_epoch_state: 1'):
        starting_point(start_args(tmp_path, pretrained=path, epochs=2), net, 10)


@pytest.mark.slow
def test_checkpoint_of_another_arch_is_refused_with_the_fix(tmp_path):
    path, _ = saved_state(tmp_path, num_classes=10, arch='RepVGG-B0')  # says it is a B0
    with pytest.raises(UserError, match='trained as RepVGG-B0, the config asks for RepVGG-A0: set arch: RepVGG-B0'):
        starting_point(start_args(tmp_path, pretrained=path), create_model(ARCH, 10), 10)
    foreign = tmp_path / 'a1.ckpt'  # a plain weights file of another arch (no 'arch' entry)
    ms.save_checkpoint(create_model('RepVGG-A1', num_classes=10), str(foreign))
    with pytest.raises(UserError, match='check arch'):
        starting_point(start_args(tmp_path, pretrained=foreign), create_model(ARCH, 10), 10)


def test_continues_resumes_at_the_newest_checkpoint_of_the_folder(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    saved_state(run, num_classes=10, epoch_num=2, step_num=3, name=f'{ARCH}_0-2_3.ckpt')
    saved_state(run, num_classes=10, epoch_num=1, step_num=10, name=f'{ARCH}_0-1_10.ckpt')
    args = start_args(tmp_path, continues=run)
    check_continues(args)
    start = start_run(args, create_model(ARCH, 10), 10)
    assert (start.epoch, start.step) == (1, 3) and f'{ARCH}_0-2_3.ckpt' in start.source and start.folder == run


@pytest.mark.parametrize('continues, pretrained, message', [
    ('missing', None, 'does not exist'), ('file.ckpt', None, 'not a file'), ('run', 'x.ckpt', 'not both')])
def test_bad_continues_are_refused(tmp_path, continues, pretrained, message):
    (tmp_path / 'file.ckpt').write_bytes(b'x')
    (tmp_path / 'run').mkdir()
    args = start_args(tmp_path, continues=tmp_path / continues, pretrained=pretrained and tmp_path / pretrained)
    with pytest.raises(UserError, match=message):
        check_continues(args)


# ----------------------------------------------------------------------------- run folder
def test_run_folder_is_named_by_time_arch_and_brief_and_never_reused(tmp_path):
    first = new_run_folder(tmp_path, ARCH, 'try', Ranks())
    second = new_run_folder(tmp_path, ARCH, 'try', Ranks())
    assert first != second and first.name.endswith(f'_{ARCH}_try') and second.is_dir()
    assert run_folder_name(0, ARCH, None).endswith(f'_{ARCH}')


@pytest.mark.slow
def test_metrics_file_has_one_row_per_epoch_and_a_plot(tmp_path):
    log = MetricsLog(tmp_path)
    for epoch in (1, 2, 3):
        log.add({'epoch': epoch, 'lr': 0.1 / epoch, 'train_loss': 1.0 / epoch, 'eval_loss': 2.0 / epoch,
                 'top1': 0.3 * epoch, 'top5': 0.33 * epoch, 'epoch_time_s': 1.5, 'eval_time_s': 0.5,
                 'overflow_steps': 0})
    resumed = MetricsLog(tmp_path)
    resumed.keep_until(2)
    resumed.add({**resumed.rows[-1], 'epoch': 3, 'top1': 0.95})
    lines = (tmp_path / 'metrics.csv').read_text().splitlines()
    assert lines[0] == 'epoch,lr,train_loss,eval_loss,top1,top5,epoch_time_s,eval_time_s,overflow_steps'
    assert [line.split(',')[0] for line in lines[1:]] == ['1', '2', '3'] and lines[3].split(',')[4] == '0.95'
    assert (tmp_path / 'curves.png').stat().st_size > 1000
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]


def test_ranks_helpers_are_identities_for_one_process():
    ranks = Ranks()
    assert ranks.is_main and ranks.from_main([1_800_000_123, -5]) == [1_800_000_123, -5]
    assert ranks.from_main([[2, 3], [0, 0]]) == [[2, 3], [0, 0]]
    with pytest.raises(ValueError, match='int32'):
        ranks.from_main([2 ** 31])  # the broadcast carries int32: a larger value is a bug, not a wrap-around
    np.testing.assert_array_equal(ranks.sum([1.5, 2.0]), [1.5, 2.0])
    ranks.barrier()  # nothing to wait for


# ----------------------------------------------------------------------------- several ranks, several machines
class FakeGroup:
    """``size`` threads standing for ranks: ``ranks(rank)`` has the ``sum`` and ``from_main`` of
    ``Ranks`` over them (every rank calls them in the same order, as with the collectives they
    stand for)."""

    def __init__(self, size):
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots = [None] * size

    def _exchange(self, rank, values):
        self.slots[rank] = values
        self.barrier.wait()
        result = list(self.slots)
        self.barrier.wait()
        return result

    def ranks(self, rank):
        def summed(values):
            return np.sum(self._exchange(rank, np.asarray(values, np.float64)), axis=0)

        def from_main(values):
            return self._exchange(rank, np.asarray(values, np.int64).tolist())[0]
        return SimpleNamespace(rank=rank, group_size=len(self.slots), sum=summed, from_main=from_main)

    def run(self, work):
        """[work(rank, ranks) for each rank], run together."""
        with ThreadPoolExecutor(len(self.slots)) as pool:
            return list(pool.map(lambda rank: work(rank, self.ranks(rank)), range(len(self.slots))))


def write_positions(folder, rank, positions_and_values):
    for (epoch, step), value in positions_and_values:
        save_checkpoint(tiny_entries(value), folder / f'{ARCH}_{rank}-{epoch}_{step}.ckpt',
                        {'epoch_num': epoch, 'step_num': step, 'steps_per_epoch': 4})


def test_ranks_with_their_own_folders_agree_and_pass_over_an_unreadable_newest(tmp_path, capsys):
    """Two machines, each with its own copy of the run folder (not shared): the ranks agree on the
    newest position both completed, (2, 2); rank 0's file there is truncated, so both fall back to
    (1, 4) and say so."""
    folders = [tmp_path / 'machine0', tmp_path / 'machine1']
    write_positions(folders[0], 0, [((1, 4), 1.0), ((2, 2), 2.0), ((2, 3), 3.0)])
    write_positions(folders[1], 1, [((1, 4), 1.0), ((2, 2), 2.0)])
    damaged = folders[0] / f'{ARCH}_0-2_2.ckpt'
    damaged.write_bytes(damaged.read_bytes()[:40])

    def resume(rank, ranks):
        saver = CheckpointSaver(folders[rank], ARCH, rank, keep_last=3, keep_best=1)
        candidates = resume_candidates(saver, 2, ranks, count=3)
        path, checkpoint = first_readable(candidates, ranks.sum, rank)
        return [p.name for p in candidates], path.name, checkpoint['linear.bias'].asnumpy().tolist()

    found = FakeGroup(2).run(resume)
    assert found[0] == ([f'{ARCH}_0-2_2.ckpt', f'{ARCH}_0-1_4.ckpt'], f'{ARCH}_0-1_4.ckpt', [1.0] * 3)
    assert found[1] == ([f'{ARCH}_1-2_2.ckpt', f'{ARCH}_1-1_4.ckpt'], f'{ARCH}_1-1_4.ckpt', [1.0] * 3)
    out = capsys.readouterr().out
    assert f'=> note: checkpoint {damaged} cannot be read (corrupt or not a checkpoint)' in out
    assert f'=> note: the checkpoint {ARCH}_0-2_2.ckpt cannot be read on 1 rank(s)' not in out  # rank 0 knows why
    # Without collectives (one process, or one shared folder) the same positions are found.
    shared = tmp_path / 'shared'
    write_positions(shared, 0, [((1, 4), 1.0), ((2, 2), 2.0), ((2, 3), 3.0)])
    write_positions(shared, 1, [((1, 4), 1.0), ((2, 2), 2.0)])
    assert resume_candidates(CheckpointSaver(shared, ARCH, 1, 3, 1), 2)[0].name == f'{ARCH}_1-2_2.ckpt'


def test_no_readable_checkpoint_is_one_error_for_every_rank(tmp_path):
    folder = tmp_path / 'run'
    write_positions(folder, 0, [((1, 4), 1.0)])
    write_positions(folder, 1, [((1, 4), 1.0)])
    (folder / f'{ARCH}_1-1_4.ckpt').write_bytes(b'\x00' * 64)

    def resume(rank, ranks):
        with pytest.raises(UserError, match='no checkpoint to resume from can be read') as error:
            first_readable(resume_candidates(CheckpointSaver(folder, ARCH, rank, 3, 1), 2, ranks, 3), ranks.sum, rank)
        return str(error.value)

    messages = FakeGroup(2).run(resume)
    assert '1 other rank(s) cannot read theirs' in messages[0] and 'corrupt or not a checkpoint' in messages[1]


def test_older_checkpoints_go_only_once_every_rank_wrote_the_new_one(tmp_path):
    """keep_checkpoint_max 1: a rank deletes its previous checkpoint only after the barrier, so a
    rank that dies while writing leaves every rank a common position."""
    calls = []
    saver = CheckpointSaver(tmp_path, ARCH, rank=0, keep_last=1, keep_best=1)
    saver.save_periodic(tiny_entries(), {'epoch_num': 1, 'step_num': 2, 'steps_per_epoch': 4})

    def barrier():
        calls.append(sorted(p.name for p in tmp_path.glob('*.ckpt')))

    saver.save_periodic(tiny_entries(), {'epoch_num': 1, 'step_num': 4, 'steps_per_epoch': 4}, all_written=barrier)
    assert calls == [[f'{ARCH}_0-1_2.ckpt', f'{ARCH}_0-1_4.ckpt']]  # both still there at the barrier
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{ARCH}_0-1_4.ckpt']


def test_a_damaged_checkpoint_fails_its_crc_instead_of_loading(tmp_path):
    path = save_checkpoint({'linear.weight': np.ones((64, 256), np.float32)}, tmp_path / 'a.ckpt')
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one bit pattern inside the tensor data
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match='cannot be read'):
        checkpoint_format.read_checkpoint(path)


# ----------------------------------------------------------------------------- run folders
def _claim(train_url, start, queue):
    mkdir = pathlib.Path.mkdir

    def slow_mkdir(self, *args, **kwargs):  # a shared file system: creating takes a while
        time.sleep(0.05)
        return mkdir(self, *args, **kwargs)

    pathlib.Path.mkdir = slow_mkdir
    start.wait()
    queue.put(new_run_folder(train_url, ARCH, 'race', Ranks()).name)


@pytest.mark.slow
def test_racing_launches_never_share_a_run_folder(tmp_path):
    """Four launches released together into one train_url, five times, on a slow file system:
    twenty different folders (check-then-create gave 10 of 40 in ten rounds here)."""
    context = multiprocessing.get_context('fork')
    names = []
    for attempt in range(5):
        start, queue = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_claim, args=(tmp_path / str(attempt % 2), start, queue)) for _ in range(4)]
        for worker in workers:
            worker.start()
        names += [f'{attempt % 2}/{queue.get(timeout=60)}' for _ in workers]
        for worker in workers:
            worker.join(60)
    assert len(names) == len(set(names)) == 20
    assert sum(1 for folder in tmp_path.iterdir() for _ in folder.iterdir()) == 20


def test_schedule_changes_are_named_against_the_last_config_copy(tmp_path):
    args = make_config(epochs=5, base_lr=0.1, batch_size=32)
    save_config(tmp_path, args)
    assert schedule_changes(tmp_path, args, 100, 100) == []
    resumed = make_config(epochs=8, base_lr=0.1, batch_size=32)
    save_config(tmp_path, resumed)  # config_resumed_1.yaml: a run resumed with 8 epochs
    later = make_config(epochs=8, base_lr=0.05, batch_size=64, lr_scheduler='exp_lr')
    assert schedule_changes(tmp_path, later, 100, 50) == [
        ('batch_size', 32, 64), ('lr_scheduler', 'cosine_lr', 'exp_lr'), ('base_lr', 0.1, 0.05),
        ('steps per epoch', 100, 50)]
    assert schedule_changes(tmp_path / 'elsewhere', later) == []  # a machine without the config copy
