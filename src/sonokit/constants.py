"""Constants shared by the whole kit (one place, no magic numbers inline)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The competition's published thop figure for nf_regnet_b1, 1 channel, 256 px, 8 classes.
COMPETITION_GFLOPS_TARGET = 0.0092865

DEFAULT_STUDENT = "nf_regnet_b1"
DEFAULT_TEACHER = "efficientnet-b4"

#: Exit code of every command when the input data (or a config) is invalid.
EXIT_BAD_INPUT = 2

CONFIG_FILENAME = "config.yaml"
FOLDS_FILENAME = "folds.csv"
