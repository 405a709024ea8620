"""The RepVGG variants by name: blocks per stage, width multipliers, groups, SE. The table of
src/repvgg.py, in a file without MindSpore, so that the config checks an arch name without loading it.
"""
ARCH_NAMES = (
    'RepVGG-A0', 'RepVGG-A1', 'RepVGG-A2', 'RepVGG-B0', 'RepVGG-B1', 'RepVGG-B1g2', 'RepVGG-B1g4',
    'RepVGG-B2', 'RepVGG-B2g2', 'RepVGG-B2g4', 'RepVGG-B3', 'RepVGG-B3g2', 'RepVGG-B3g4',
    'RepVGG-D2se',
)
# The quantization-friendly variants: every RepVGG but D2se, named with a QA prefix.
QA_ARCH_NAMES = tuple('QA' + arch for arch in ARCH_NAMES if arch != 'RepVGG-D2se')
ARCH_NAMES = ARCH_NAMES + QA_ARCH_NAMES
_A_DEPTHS = (2, 4, 14, 1)
_B_DEPTHS = (4, 6, 16, 1)

# arch -> (blocks per stage 1-4, width multipliers of stages 1-4, groups of grouped layers, SE)
ARCH_SPECS = {
    'RepVGG-A0': (_A_DEPTHS, (0.75, 0.75, 0.75, 2.5), 1, False),
    'RepVGG-A1': (_A_DEPTHS, (1, 1, 1, 2.5), 1, False),
    'RepVGG-A2': (_A_DEPTHS, (1.5, 1.5, 1.5, 2.75), 1, False),
    'RepVGG-B0': (_B_DEPTHS, (1, 1, 1, 2.5), 1, False),
    'RepVGG-B1': (_B_DEPTHS, (2, 2, 2, 4), 1, False),
    'RepVGG-B1g2': (_B_DEPTHS, (2, 2, 2, 4), 2, False),
    'RepVGG-B1g4': (_B_DEPTHS, (2, 2, 2, 4), 4, False),
    'RepVGG-B2': (_B_DEPTHS, (2.5, 2.5, 2.5, 5), 1, False),
    'RepVGG-B2g2': (_B_DEPTHS, (2.5, 2.5, 2.5, 5), 2, False),
    'RepVGG-B2g4': (_B_DEPTHS, (2.5, 2.5, 2.5, 5), 4, False),
    'RepVGG-B3': (_B_DEPTHS, (3, 3, 3, 5), 1, False),
    'RepVGG-B3g2': (_B_DEPTHS, (3, 3, 3, 5), 2, False),
    'RepVGG-B3g4': (_B_DEPTHS, (3, 3, 3, 5), 4, False),
    'RepVGG-D2se': ((8, 14, 24, 1), (2.5, 2.5, 2.5, 5), 1, True),
}
ARCH_SPECS.update({arch: ARCH_SPECS[arch[len('QA'):]] for arch in QA_ARCH_NAMES})
