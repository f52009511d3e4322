"""The offline demo: a benchmark that needs no download, and ``causalclip demo`` that runs the paper's protocol on it.

- :mod:`.photos`: real photographs shipped inside the scikit-image and scikit-learn wheels (plus the user's own),
  cut into tiles and split by scene;
- :mod:`.generators`: four generator families trained here, from a seed, on the real training tiles;
- :mod:`.build`: the cached build (tiles and fakes on disk, keyed by their parameters);
- :mod:`.run`: features with a weight-free forensic backbone (:mod:`causalclip.backbones.forensic`), CausalCLIP, UnivFD and
  VIB-Net heads on them and narrow NPR, CNNSpot, FreDect, Fusing and LGrad on the tiles' pixels, trained on one
  family (or on all families but one: protocol "leave-one-out") and tested on all, tables in the paper's format,
  plots, a detector folder.
"""

from .build import BUILD_SIZES, Benchmark, BuildConfig, build_benchmark, default_cache
from .photos import DemoError

__all__ = ["BUILD_SIZES", "Benchmark", "BuildConfig", "DemoError", "build_benchmark", "default_cache"]
