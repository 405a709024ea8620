"""Convert official PyTorch / timm RepVGG weights (or a training checkpoint) to a MindSpore .ckpt.

    python convert.py --arch RepVGG-B0 --input RepVGG-B0-train.pth --output RepVGG-B0.ckpt [--deploy]

The layout (official, timm, MindSpore), the form (train, deploy) and the container (.pth,
.safetensors, .ckpt) are detected. .pth files are read without torch and without running any
code they contain. See src/tools/conversion/ and docs/weights.md.
"""
from src.repvgg import ARCH_NAMES
from src.tools.base.cli import OneLineParser, user_entry_point
from src.tools.base.device import set_device
from src.tools.base.files import check_outputs_apart
from src.tools.conversion.convert import convert_file


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument('--input', required=True, help='.pth / .pt / .safetensors / .ckpt file to convert')
    parser.add_argument('--output', required=True, help='MindSpore checkpoint to write (.ckpt)')
    parser.add_argument('--arch', choices=ARCH_NAMES, default=None, metavar='ARCH',
                        help='RepVGG-A0 ... RepVGG-D2se, QARepVGG-A0 ... QARepVGG-B3g4; checked against the shapes in '
                             'the file (detected if omitted)')
    parser.add_argument('--deploy', action='store_true',
                        help='write the re-parameterized (deploy) form, for create_model(..., deploy=True)')
    parser.add_argument('--num_classes', type=int, default=None,
                        help="classifier size; default and only accepted value: the file's own")
    parser.add_argument('--ema', action='store_true', help='MindSpore .ckpt input: convert its ema.* copy')
    parser.add_argument('--device_target', choices=('CPU', 'GPU', 'Ascend'), default='CPU',
                        help='device for the self-check (default CPU)')
    return parser.parse_args(argv)


@user_entry_point
def main(argv=None):
    args = parse_args(argv)
    check_outputs_apart({'--output': args.output}, {'--input': args.input})
    set_device(args.device_target, graph_mode=False)  # one forward pass: no graph compilation
    report = convert_file(args.input, args.output, arch=args.arch, deploy=args.deploy,
                          num_classes=args.num_classes, ema=args.ema)
    for line in report.lines():
        print(line)


if __name__ == '__main__':
    main()
