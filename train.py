"""Train a RepVGG classifier: ``python train.py --config CONFIG.yaml [--key value ...]``.

Standalone, or data parallel with the gradient mean under msrun (CPU or GPU) or mpirun (GPU);
see scripts/. The demo: ``python train.py --config src/configs/RepVGG-A0_digits.yaml``.
Reads top to bottom like torchvision's references/classification/train.py; the machinery lives
in src/tools (loop, checkpoints, run folder) and src/ema.
"""
import contextlib
import time
from pathlib import Path

import mindspore as ms

from src.config import parse_config
from src.dataset import Preprocessing, class_names, get_dataset, mixup_active
from src.ema.ema import EMA
from src.ema.train_one_step_with_ema import TrainOneStepWithEMA
from src.repvgg import get_model
from src.tools.base.cli import UserError, user_entry_point
from src.tools.base.device import init_device, set_seed
from src.tools.base.files import check_folder_creatable, check_outputs_apart, check_writable
from src.tools.checkpoints.model_card import ModelCard
from src.tools.demo_data import build_demo_data, is_complete
from src.tools.training.amp import cast_amp, loss_scale_cell
from src.tools.training.criterion import NetWithLoss, get_criterion
from src.tools.training.distributed import Ranks
from src.tools.training.optimizer import get_optimizer
from src.tools.training.resume import check_continues, restore_state, start_run
from src.tools.training.run_folder import log_start_up, save_class_names, save_config
from src.tools.training.schedulers import lr_schedule
from src.tools.training.trainer import Trainer, open_sample_log
from src.tools.training.watchdog import Watchdog


def check_args(args):
    """Stop on inputs that cannot work, before anything is built."""
    if args.data_url is None:
        raise UserError('set data_url (a folder with train/ and val/ class folders), e.g. --data_url /data/imagenet')
    if args.eval_ema and not args.with_ema:
        raise UserError('eval_ema needs the EMA: set with_ema: 1')
    check_continues(args)
    label, output = ('continues', args.continues) if args.continues else ('train_url', args.train_url)
    data = Path(args.data_url)
    check_outputs_apart({label: output}, {'config': args.config, 'pretrained': args.pretrained,
                                          'training folder': data / 'train', 'validation folder': data / 'val'})
    if args.continues:
        check_writable(args.continues, 'continues')
    else:
        check_folder_creatable(args.train_url, 'train_url')


def training_classes(args):
    """The class folder names of data_url/train, in label order; their count must be num_classes."""
    classes = class_names(Path(args.data_url) / 'train')
    if len(classes) != args.num_classes:
        raise UserError(f'{args.data_url}/train has {len(classes)} class folders but num_classes is '
                        f'{args.num_classes}: set num_classes: {len(classes)}')
    return classes


@user_entry_point
def main(argv=None):
    began = time.time()
    args = parse_config(argv, 'train.py', 'Train a RepVGG classifier (standalone, or under msrun / mpirun).')
    check_args(args)
    rank, group_size = init_device(args.device_target, args.device_id)
    ranks = Ranks(rank, group_size)
    # Under msrun: if a rank dies, the others stop and name it (src/tools/training/watchdog.py).
    watchdog = Watchdog.for_launcher(rank, group_size, args.watchdog_timeout, args.watchdog_port)
    with watchdog or contextlib.nullcontext():
        train(args, ranks, watchdog, began)


def train(args, ranks, watchdog, began):
    rank, group_size = ranks.rank, ranks.group_size
    set_seed(args.seed)
    print(f'=> rank {rank} of {group_size}, {args.device_target}, {args.arch}, amp {args.amp_level}', flush=True)
    if args.device_num != group_size:
        print(f'=> note: device_num is {args.device_num}, {group_size} process(es) were launched; '
              f'training on {group_size} (scripts/ start several)')
    if args.use_data_sink:
        print('=> note: use_data_sink is not used: batches are fed from the host so that a run can '
              'resume mid-epoch')

    # Data: the training classes name the labels; this rank's shard of the training set, its part
    # of the validation set (labelled by class name).
    if args.demo_data and not is_complete(args.data_url):
        build_demo_data(args.data_url)
        print(f'=> demo_data: 1, so the scikit-learn digits demo set was built in {args.data_url}, which did not '
              f'exist yet (set demo_data: 0 to train on a folder of your own)', flush=True)
    classes = training_classes(args)
    train_ds = get_dataset(args, training=True, rank=rank, group_size=group_size, classes=classes, total=ranks.sum)
    val_ds = get_dataset(args, training=False, rank=rank, group_size=group_size, classes=classes, total=ranks.sum)
    steps_per_epoch = train_ds.get_dataset_size()
    if steps_per_epoch == 0:
        raise UserError(f'{args.data_url}/train gives no full batch of {args.batch_size} per rank; '
                        f'lower batch_size or add images')

    # Model; where training starts (fresh, pretrained, continues) and in which run folder.
    net = cast_amp(get_model(args), args.amp_level)
    start = start_run(args, net, steps_per_epoch, ranks, classes)
    folder = start.folder
    if watchdog is not None:
        watchdog.resume_hint = f'Resume with continues {folder}'

    # Optimizer over a per-step learning-rate schedule, loss, EMA, one training step.
    lr_values = lr_schedule(args, steps_per_epoch)
    optimizer = get_optimizer(args, net, lr_values)
    criterion = get_criterion(args.label_smoothing, soft_targets=mixup_active(args))
    ema = EMA(net.get_parameters(), args.ema_decay) if args.with_ema else None
    train_cell = TrainOneStepWithEMA(NetWithLoss(net, criterion), optimizer,
                                     loss_scale_cell(args.amp_level, args.loss_scale, args.is_dynamic_loss_scale), ema)
    if start.checkpoint is not None:
        restore_state(train_cell, start.checkpoint)
    global_step = start.epoch * steps_per_epoch + start.step
    optimizer.global_step.set_data(ms.Tensor([global_step], optimizer.global_step.dtype))
    if start.source:
        print(f'=> starting from {start.source}: epoch {start.epoch + 1}, step {start.step} '
              f'(global step {global_step}), lr {lr_values[global_step]:.6g}', flush=True)

    # Run folder contents: the config copy, the class names, the details of the data start-up.
    if ranks.is_main:
        save_config(folder, args)
        save_class_names(folder, classes)
        log_start_up(folder, [train_ds.start_up, val_ds.start_up])
    sample_log = open_sample_log(folder / f'samples_rank{rank}.txt') if args.log_samples else None
    print(f'=> run folder {folder}: {steps_per_epoch} steps per epoch, epochs {start.epoch + 1}-{args.epochs}',
          flush=True)

    # What every checkpoint says the model is: eval.py, export.py and infer.py need no config.
    card = ModelCard.of(args.arch, args.num_classes, args.deploy, classes,
                        Preprocessing(args.image_size, args.interpolation))
    trainer = Trainer(args=args, train_cell=train_cell, net=net, ema=ema, card=card,
                      saver=start.saver, metrics_log=start.metrics_log, ranks=ranks,
                      steps_per_epoch=steps_per_epoch, lr_values=lr_values, sample_log=sample_log,
                      watchdog=watchdog)
    try:
        summary = trainer.fit(train_ds, val_ds, start.epoch, start.step, start.epoch_metrics)
    except KeyboardInterrupt:
        print(f'=> interrupted; the checkpoints written so far are complete: resume with --continues {folder}',
              flush=True)
        raise
    if sample_log is not None:
        sample_log.close()

    last = summary['last']
    print(f"=> final top-1 {last['acc']:.4f}, top-5 {last['top5']:.4f} (epoch {args.epochs})")
    if summary['best'] is not None:
        acc, epoch, path = summary['best']
        print(f'=> best top-1 {acc:.4f} at epoch {epoch}: {path}')
    epochs_run = args.epochs - start.epoch
    print(f'=> {epochs_run} epoch{"s" if epochs_run != 1 else ""} in {time.time() - began:.0f} s')
    print('train success', flush=True)


if __name__ == '__main__':
    main()
