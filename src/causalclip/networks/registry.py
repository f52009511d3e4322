"""The one place networks trained on images are selected by name, each with its architecture config, its builder,
the authors' published training recipe (the defaults of pixel training) and where its official checkpoints live.

Every recipe value below is read from the authors' code; docs/guides/comparison-methods.md cites the file and line
of each and lists where we deviate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..core.config import ConfigError, config_from_dict, config_to_dict
from .cnnspot import CNNSpotConfig, CNNSpotNet
from .fredect import IMAGENET_MEAN, IMAGENET_STD, FreDectConfig, FreDectNet, FreDectSimpleConfig, FreDectSimpleNet
from .fusing import FusingConfig, FusingNet
from .lgrad import LGradConfig, LGradNet, for_raw_images
from .npr import NPRConfig, NPRNet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NETWORKS",
    "NetworkMethod",
    "Recipe",
    "build_network",
    "get_network_method",
    "network_config_dict",
]


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A method's published training recipe: the defaults of pixel training for it.

    Tuples are typed ``tuple[float, ...]`` so that config files and overrides round-trip through
    ``core.config``; :meth:`validate` checks their lengths.
    """

    batch_size: int
    lr: float
    optimizer: Literal["adam", "sgd"]
    betas: tuple[float, ...] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int  # the authors' maximum number of epochs
    lr_step_every: int = 0  # epochs between step decays of the learning rate; 0 = none
    lr_step_gamma: float = 0.1
    plateau_patience: int = 0  # CNNSpot-style: lr /= 10 after this many epochs without improvement, stop below min_lr
    min_lr: float = 1e-6
    train_resize: int | None = None  # resize before cropping at training (None: no resize)
    # How train_resize applies: "shorter_side" keeps the aspect ratio (TF.resize(img, 256): CNNSpot, FreDect);
    # "square" resizes to train_resize x train_resize (transforms.Resize((256, 256)): NPR).
    train_resize_mode: Literal["shorter_side", "square"] = "shorter_side"
    train_crop: int = 224  # crop at training
    train_crop_mode: Literal["random", "center"] = "random"  # FreDect's benchmark version centre-crops at training
    flip: bool = True  # random horizontal flip at training
    blur_prob: float = 0.0
    blur_sigma: tuple[float, ...] = (0.0, 3.0)  # Gaussian sigma ~ U[lo, hi]
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, ...] = (30, 100)  # JPEG quality ~ uniform integer in [lo, hi]
    test_crop: int = 224  # centre crop WITHOUT resize at test (the paper's test-time preprocessing)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = ""  # URL(s) of the authors' files this recipe comes from

    def validate(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"betas: two values, got {list(self.betas)}")
        for name in ("blur_sigma", "jpeg_quality"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{name}: two values (lo <= hi), got {list(value)}")
        if self.blur_sigma[0] < 0:
            raise ValueError(f"blur_sigma: must be >= 0, got {list(self.blur_sigma)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality: within [1, 100], got {list(self.jpeg_quality)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(not s > 0 for s in self.std):
            raise ValueError(f"mean/std: three values each, std > 0; got {list(self.mean)}, {list(self.std)}")
        for name in ("lr_step_every", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.train_resize is not None and self.train_resize < 1:
            raise ValueError(f"train_resize: must be >= 1 or null, got {self.train_resize}")


@dataclass(frozen=True)
class NetworkMethod:
    """A detector whose network learns from pixels: architecture, builder, recipe, initialisation, checkpoints."""

    name: str
    title: str
    config_cls: type
    build: Callable[[Any], nn.Module]  # config instance -> module
    recipe: Recipe
    init: Literal["scratch", "imagenet"]  # the authors' initialisation
    checkpoints: tuple[str, ...]  # where the official checkpoints are published, and what the importer reads
    # The architecture config a detector built from a run must use, when it differs from the run's (LGrad trained
    # on cached gradient maps scores raw images); None = the run's config as it is.
    detector_config: Callable[[Any], Any] | None = None


_NPR = "https://github.com/chuangchuangtan/NPR-DeepfakeDetection/blob/73cde1ced21291bfb504a2add2b53fbe99c4f433"
_CNNDET = "https://github.com/PeterWang512/CNNDetection/blob/ea0b5622365e3a9cd31d1b54b6b5971131a839ab"
_AIGC = "https://github.com/Ekko-zn/AIGCDetectBenchmark/blob/5cd41a614b6c848c53ae75f561b2e1a5287cccf0"
_FRANK = "https://github.com/RUB-SysSec/GANDCTAnalysis/blob/988c4c3dc46ada117f2bb49a03ebf57c292dc505"
_FUSING = "https://github.com/littlejuyan/FusingGlobalandLocal/blob/0cb3d2645bf7a5464c61f824e060e421c9615d65"
_LGRAD = "https://github.com/chuangchuangtan/LGrad/blob/7cb5973821f9ab56b0dbc3aca50b88c835ebc993"
_AIGC_DATA = "https://pan.baidu.com/s/1dZz7suD-X5h54wCC9SyGBA?pwd=l30u, or modelscope aemilia/AIGCDetectionBenchmark"

NETWORKS: dict[str, NetworkMethod] = {
    "npr": NetworkMethod(
        name="npr",
        title="NPR (Tan et al., CVPR 2024)",
        config_cls=NPRConfig,
        build=NPRNet,
        recipe=Recipe(
            batch_size=32,
            lr=2e-4,
            optimizer="adam",
            epochs=50,
            lr_step_every=10,
            lr_step_gamma=0.9,
            train_resize=256,
            train_resize_mode="square",
            train_crop=224,
            source=f"{_NPR}/README.md (train command) {_NPR}/networks/trainer.py {_NPR}/data/datasets.py "
            f"{_NPR}/options/base_options.py",
        ),
        init="scratch",
        checkpoints=(
            f"{_NPR}/NPR.pth: the paper's ProGAN 4-class model, a bare state dict (conv1, bn1, layer1-2, fc1)",
            f"{_NPR}/model_epoch_last_3090.pth: the model behind the README's AIGCDetectBenchmark table, same layout",
            "https://drive.google.com/drive/folders/1_mD17F94xMbJqEAsWRW1gVsZ5db6YamI: GenImage sdv4 model",
        ),
    ),
    "cnnspot": NetworkMethod(
        name="cnnspot",
        title="CNNSpot (Wang et al., CVPR 2020)",
        config_cls=CNNSpotConfig,
        build=CNNSpotNet,
        recipe=Recipe(
            batch_size=64,
            lr=1e-4,
            optimizer="adam",
            epochs=10000,
            plateau_patience=5,
            min_lr=1e-6,
            train_resize=256,
            train_crop=224,
            blur_prob=0.5,
            blur_sigma=(0.0, 3.0),
            jpeg_prob=0.5,
            jpeg_quality=(30, 100),
            source=f"{_CNNDET}/README.md (Blur+JPEG(0.5) command) {_CNNDET}/train.py {_CNNDET}/networks/trainer.py "
            f"{_CNNDET}/options/train_options.py {_CNNDET}/options/base_options.py {_CNNDET}/data/datasets.py",
        ),
        init="imagenet",
        checkpoints=(
            "https://www.dropbox.com/s/2g2jagq2jn1fd0i/blur_jpg_prob0.5.pth: Blur+JPEG(0.5), {'model': state dict, ...}"
            f" (listed in {_CNNDET}/weights/download_weights.sh)",
            "https://www.dropbox.com/s/h7tkpcgiwuftb6g/blur_jpg_prob0.1.pth: Blur+JPEG(0.1), same layout",
            "AIGCDetectBenchmark's CNNSpot.pth (https://pan.baidu.com/s/1dZz7suD-X5h54wCC9SyGBA?pwd=l30u, or "
            "modelscope aemilia/AIGCDetectionBenchmark): {'model': state dict}",
        ),
    ),
    "fredect": NetworkMethod(
        name="fredect",
        title="FreDect (Frank et al., ICML 2020; AIGCDetectBenchmark's ResNet-50 version)",
        config_cls=FreDectConfig,
        build=FreDectNet,
        recipe=Recipe(
            batch_size=64,
            lr=1e-4,
            optimizer="adam",
            epochs=1000,
            plateau_patience=5,
            min_lr=1e-6,
            train_resize=256,
            train_crop=224,
            train_crop_mode="center",
            flip=False,
            source=f"{_AIGC}/data/process.py (processing_DCT, dct2_wrapper) {_AIGC}/util.py (get_model) "
            f"{_AIGC}/options.py {_AIGC}/train.py {_AIGC}/networks/trainer.py",
        ),
        init="scratch",
        checkpoints=(
            "AIGCDetectBenchmark's FreDect.pth (https://pan.baidu.com/s/1dZz7suD-X5h54wCC9SyGBA?pwd=l30u, or modelscope "
            "aemilia/AIGCDetectionBenchmark): {'netC': torchvision ResNet-50 state dict, keys maybe 'module.'-prefixed}",
            f"{_AIGC}/weights/auxiliary/dct_mean and dct_var: the DCT statistics that checkpoint needs, "
            "torch-saved float64 tensors of shape (3, 224, 224)",
        ),
    ),
    "fredect-simple": NetworkMethod(
        name="fredect-simple",
        title="FreDect (Frank et al., ICML 2020; the paper's simple CNN)",
        config_cls=FreDectSimpleConfig,
        build=FreDectSimpleNet,
        recipe=Recipe(
            batch_size=32,
            lr=1e-3,
            optimizer="adam",
            epochs=50,
            # Keras EarlyStopping(patience=5): the first plateau ends the run (lr / 10 < min_lr = lr).
            plateau_patience=5,
            min_lr=1e-3,
            # crop_lsun.py / crop_celeba.py: centre square, resized to 128 x 128, before the DCT.
            train_resize=128,
            train_crop=128,
            train_crop_mode="center",
            flip=False,
            test_crop=128,
            source=f"{_FRANK}/classifier.py {_FRANK}/src/models.py (build_simple_cnn) {_FRANK}/prepare_dataset.py "
            f"{_FRANK}/crop_lsun.py",
        ),
        init="scratch",
        checkpoints=(
            "https://drive.google.com/open?id=1QjQnqMQnQOoIPwgzdJVJGwYzdReKqc0N: TensorFlow SavedModels, "
            "not readable by the importer (no weights_only path exists for them)",
        ),
    ),
    "fusing": NetworkMethod(
        name="fusing",
        title="Fusing (Ju et al., ICIP 2022)",
        config_cls=FusingConfig,
        build=FusingNet,
        recipe=Recipe(
            batch_size=128,
            lr=5e-5,
            optimizer="adam",
            epochs=10000,
            # EarlyStopping(patience=10) on validation accuracy, then lr / 2 and go on (ours: lr / 10, stop at min_lr).
            plateau_patience=10,
            min_lr=1e-6,
            # The whole image goes in (no resize, no crop: CNNDetection's 256 x 256 ProGAN images); flips; the
            # train.sh augmentation: blur sigma ~ U[0, 3] and JPEG quality in [30, 100], each with p 0.1.
            train_resize=None,
            train_crop=256,
            train_crop_mode="center",
            flip=True,
            blur_prob=0.1,
            blur_sigma=(0.0, 3.0),
            jpeg_prob=0.1,
            jpeg_quality=(30, 100),
            test_crop=256,
            source=f"{_FUSING}/train.sh {_FUSING}/train.py {_FUSING}/networks/trainer.py "
            f"{_FUSING}/data/dataset_train.py {_FUSING}/options/train_options.py {_FUSING}/options/base_options.py",
        ),
        init="imagenet",
        checkpoints=(
            f"{_FUSING}/README.md publishes no checkpoint; its trainer saves {{'model': Patch5Model state dict, "
            "'optimizer', 'total_steps'}, keys 'module.'-prefixed when trained on several GPUs (train.sh uses 4)",
            f"AIGCDetectBenchmark's Fusing.pth ({_AIGC_DATA}): {{'model': Patch5Model state dict}}; the unused "
            "resnet.fc (1000-way) is dropped",
        ),
    ),
    "lgrad": NetworkMethod(
        name="lgrad",
        title="LGrad (Tan et al., CVPR 2023)",
        config_cls=LGradConfig,
        build=LGradNet,
        recipe=Recipe(
            batch_size=16,
            lr=5e-4,
            optimizer="adam",
            epochs=100,
            lr_step_every=10,  # --delr_freq 10: lr *= 0.8 (trainer.adjust_learning_rate)
            lr_step_gamma=0.8,
            min_lr=1e-6,
            # On the 256 x 256 gradient PNGs: Resize((256, 256)), RandomCrop(224), flip; no blur/JPEG (the
            # data_augment call is commented out in their datasets.py).
            train_resize=256,
            train_resize_mode="square",
            train_crop=224,
            flip=True,
            test_crop=256,  # the gradient map is 256 x 256; they test without resize or crop
            source=f"{_LGRAD}/train-detector.sh {_LGRAD}/CNNDetection/train.py "
            f"{_LGRAD}/CNNDetection/networks/trainer.py {_LGRAD}/CNNDetection/data/datasets.py "
            f"{_LGRAD}/CNNDetection/options/base_options.py {_LGRAD}/CNNDetection/options/train_options.py "
            f"{_LGRAD}/CNNDetection/eval_test8gan.py {_LGRAD}/img2gad_pytorch/gen_imggrad.py",
        ),
        init="imagenet",
        checkpoints=(
            "https://drive.google.com/drive/folders/17-MAyCpMqyn4b_DFP2LekrmIgRovwoix: the classifiers "
            f"({_LGRAD}/README.md), CNNDetection's {{'model': resnet50 state dict with fc 2048 -> 1, ...}}; imported "
            "with transform= the discriminator below",
            "https://lid-1302259812.cos.ap-nanjing.myqcloud.com/tmp/karras2019stylegan-bedrooms-256x256_discriminator"
            f".pth: the transformation model ({_LGRAD}/img2gad_pytorch/README.md), genforce's StyleGAN "
            "discriminator state dict (lod, input0-6, layer0-14, blur kernels)",
            f"AIGCDetectBenchmark's LGrad.pth and weights/karras2019stylegan-bedrooms-256x256_discriminator.pth "
            f"({_AIGC_DATA}): the same two layouts",
        ),
        detector_config=for_raw_images,
    ),
}


def get_network_method(name: str) -> NetworkMethod:
    """The registered method ``name``; KeyError naming the available ones."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise KeyError(f"unknown network {name!r}; available: {sorted(NETWORKS)}") from None


def _config(method: NetworkMethod, config: Any) -> Any:
    if config is None:
        return method.config_cls()
    if isinstance(config, dict):
        return config_from_dict(method.config_cls, config, where=f"{method.name}: ")
    if isinstance(config, method.config_cls):
        validate = getattr(config, "validate", None)
        if validate is not None:
            try:
                validate()
            except ValueError as exc:
                raise ConfigError(f"{method.name}: {exc}") from exc
        return config
    raise TypeError(f"{method.name}: config must be None, a dict or a {method.config_cls.__name__}, got {type(config)}")


def build_network(name: str, config: Any = None) -> nn.Module:
    """Build network ``name`` (in training mode, freshly initialised) from None (defaults), a dict (unknown keys
    are an error) or a config instance."""
    method = get_network_method(name)
    return method.build(_config(method, config))


def network_config_dict(name: str, module_or_config: Any) -> dict[str, Any]:
    """A JSON-able config that rebuilds the same architecture with ``build_network(name, that_dict)``."""
    method = get_network_method(name)
    config = module_or_config.config if isinstance(module_or_config, nn.Module) else module_or_config
    if not isinstance(config, method.config_cls):
        raise TypeError(
            f"{name}: expected a {method.config_cls.__name__} or a module built from one, got {type(config)}"
        )
    return config_to_dict(config)
