"""keras-mft: Mask Fine-Tuning for KerasHub language models.

The public names are listed in `__init__.pyi` and imported when first used,
as SciPy's and scikit-image's are: `import keras_mft` imports neither Keras
nor TensorFlow, so the `keras-mft` command can keep their C++ log lines off
the terminal before they load (see `keras_mft/__main__.py`).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
