"""fastai-tricks: training tricks for image classification as fastai Callbacks."""
from tricks.errors import ConfigError, DataError, RunFolderError, TricksError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "RunFolderError", "TricksError", "__version__"]
