import pytest

from calib_helpers import INFER, SHARED, TRAIN


@pytest.fixture
def shared():
    if not INFER.is_file() or not TRAIN.is_file():
        pytest.skip(f"shared measurements not present ({SHARED})")
    return SHARED
