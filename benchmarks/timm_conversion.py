"""timm's own RepVGG models through convert.py: names map, the arch is recognised, logits agree.

    python benchmarks/timm_conversion.py [--models repvgg_a0 repvgg_d2se ...] [--image_size 64]

Needs timm (and torch); nothing is downloaded: each model is built with timm's random initialisation
(which already draws the BN scales and shifts), its BN moving statistics are randomised too (default
statistics would prove little), and its state dict is saved as
``.safetensors`` in train form and after timm's ``reparameterize_model`` in deploy form. Each file
is converted with ``convert_file`` (train form as is, and to deploy form) and the MindSpore network's
logits are compared with timm's on the same random batch. Prints a table; asserts nothing.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMM_MODELS = ('repvgg_a0', 'repvgg_a1', 'repvgg_a2', 'repvgg_b0', 'repvgg_b1', 'repvgg_b1g4', 'repvgg_b2',
               'repvgg_b2g4', 'repvgg_b3', 'repvgg_b3g4', 'repvgg_d2se')


def randomized_timm_model(name, seed):
    import timm
    import torch
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # timm drew weight ~ N(0.1, 0.1), bias ~ N(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(TIMM_MODELS))
    parser.add_argument('--image_size', type=int, default=64)
    args = parser.parse_args()

    import mindspore as ms
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.utils.model import reparameterize_model

    from src.tools.base.device import set_device
    from src.tools.base.numerics import relative_difference
    from src.tools.conversion.convert import convert_file

    set_device('CPU', graph_mode=False)
    print(f'# timm {timm.__version__}, torch {torch.__version__}, mindspore {ms.__version__}; '
          f"timm's random initialisation, randomised BN statistics, 10 classes, input 2x3x{args.image_size}x"
          f'{args.image_size}')
    print(f'{"timm model":<14} {"arch found":<13} {"timm file":<11} {"converted to":<13} {"logits rel. diff":>16}')
    images = np.random.default_rng(0).standard_normal((2, 3, args.image_size, args.image_size)).astype(np.float32)
    began = time.time()
    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(args.models):
            model = randomized_timm_model(name, seed=index)
            with torch.no_grad():
                expected = model(torch.from_numpy(images)).numpy()
            deployed = reparameterize_model(randomized_timm_model(name, seed=index))
            for form, source in (('train', model), ('deploy', deployed)):
                path = Path(folder) / f'{name}_{form}.safetensors'
                save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(path))
                targets = ('train', 'deploy') if form == 'train' else ('deploy',)
                for target in targets:
                    output = Path(folder) / f'{name}_{form}_{target}.ckpt'
                    report = convert_file(path, output, deploy=target == 'deploy')
                    logits = report.conversion.net(ms.Tensor(images)).asnumpy()
                    print(f'{name:<14} {report.arch:<13} {form:<11} {target:<13} '
                          f'{relative_difference(logits, expected):>16.1e}', flush=True)
    print(f'# {len(args.models)} models in {time.time() - began:.0f} s')


if __name__ == '__main__':
    main()
