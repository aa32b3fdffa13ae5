"""FPN-50 of the FPN seed: ResNet-50 bottom-up, 1x1 laterals to 256 channels, nearest top-down, 3x3 smoothing of
P2..P4 (P5 is its lateral). 26,262,336 parameters; P2..P5 are 56, 28, 14, 7 pixels for a 224x224 input."""

model = dict(type="ResNetFPN", depth=50, style="seed")
input_shape = (1, 3, 224, 224)
