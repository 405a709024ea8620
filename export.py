"""Export the deploy (re-parameterized) network of a checkpoint to MINDIR or ONNX, fp32.

python export.py --config C --pretrained CKPT --file_format MINDIR|ONNX|AIR --export_path P [--ema 1]
"""
from src.config import parse_config
from src.tools.base.cli import UserError, user_entry_point
from src.tools.base.device import set_device
from src.tools.deployment.export import check_export_format, check_export_target, export_network
from src.tools.deployment.model_files import load_deploy_network


@user_entry_point
def main(argv=None):
    config = parse_config(argv, description='Export a RepVGG checkpoint, re-parameterized to its deploy '
                                            'form, as MINDIR or ONNX (input Nx3xSxS float32).')
    check_export_format(config.file_format, config.device_target)
    if config.pretrained is None:
        raise UserError('pass --pretrained with the .ckpt file to export (an untrained network is useless)')
    check_export_target(config.export_path, config.file_format)
    set_device(config.device_target, config.device_id)
    net, description, class_names = load_deploy_network(config.pretrained, config.arch, config.num_classes,
                                                        ema=config.ema)
    print(f'=> {description}')
    path, difference, batch = export_network(net, config.image_size, config.file_format, config.export_path,
                                             class_names)
    names = f'{len(class_names)} class names' if class_names else 'no class names (the checkpoint records none)'
    print(f'=> exported {path} ({config.file_format}, deploy form, input {batch}x3x{config.image_size}x'
          f'{config.image_size} float32, {names}; max relative difference to the network {difference:.2g})')
    print('=> export success')


if __name__ == '__main__':
    main()
