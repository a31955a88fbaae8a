"""audioop for tests on every supported Python (stdlib to 3.12, audioop-lts from 3.13)."""
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def lin2ulaw(samples: np.ndarray) -> bytes:
    return audioop.lin2ulaw(np.asarray(samples, dtype="<i2").tobytes(), 2)


def lin2alaw(samples: np.ndarray) -> bytes:
    return audioop.lin2alaw(np.asarray(samples, dtype="<i2").tobytes(), 2)
